"""rig_app: the recording rig for the paper's real-world evaluation protocol (paper §3).

Qt-free logic: alignment markers (``markers``), the music and noise programs
(``program``), song import (``songs``), audio devices and take capture (``devices``,
``capture``, ``virtual_devices``), aligning recorded takes to the program clock
(``align``) and the session folder that ties songs, program and takes together
(``session``). ``rig_app.ui`` (PySide6) and ``rig_app.cli`` (``afp-rig``) wrap them; only
``rig_app.ui`` imports Qt.
"""
