"""corral's private core: the hard, low-level Linux work.

Nothing here knows about Process, Queue, Lock or Pool. The public objects are thin
layers over these modules:

- ``_linux``:     libc through ctypes, prctl, /proc helpers.
- ``_fdpass``:    handing a file descriptor to a child at start, under every start method.
- ``_tree``:      freezing and killing a whole process subtree, bottom to top.
- ``_lifeline``:  the pipe whose end tells a child that the process that started it is gone.
- ``_reaper``:    the thread that reaps corral's own children through pidfds, and only them.
- ``_popen``:     per-start-method launchers that wire all of the above into a child.
- ``_bootstrap``: what runs first and last inside every corral child.
"""
