"""Evaluation protocols and their reports.

- ``realworld``: queries cut from recorded, aligned takes of a session (paper §3, Tables 2, 4)
- ``baseline``: noise added offline at fixed SNRs (paper §5.2, Table 3)
- ``quantisation``: accuracy vs code length and index size of IVF-PQ (paper §5.3, Figure 7)
- ``sessions``: the GUI-free reader of the rig's session folders
- ``report``: report folders (report.json, trials.csv, accuracy.png, table.md) and
  ``read_report``
- ``commands``: ``afp evaluate``

Every protocol runs ``afp_core.recogniser.Recogniser`` objects, neural or landmark.
"""
