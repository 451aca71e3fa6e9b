"""Management commands `l2 up` runs once, in order, after migrate and before the processes start.

Each is a list of arguments to manage.py; a failure is reported and the system starts anyway.
"""
COMMANDS: list[list[str]] = [
    ["scan"],  # the first scan, so the dashboard has the real programs at once
    # the emulator starts from its fixtures each time: tell it again what we published (adding only)
    ["reconcile"],
    ["make_demo_l1", "--start", "--results"],  # demo L1 frames (and a fake inversion) for some programs
]
