"""rig_app: the recording rig for the paper's real-world evaluation protocol (paper §3).

Qt-free logic only: alignment markers (``markers``), the music and noise programs
(``program``), aligning recorded takes to the program clock (``align``) and the session
folder that ties songs, program and takes together (``session``). The GUI and the command
line wrap these modules; nothing here imports Qt or opens an audio device.
"""
