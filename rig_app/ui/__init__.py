"""The rig's Qt application: thin views over the Qt-free logic in ``rig_app``.

``state`` is the Qt-free model (the open session, change events, the jobs the views run),
``workers`` runs those jobs on a thread pool, ``main_window`` and ``pages`` are the views.
"""
