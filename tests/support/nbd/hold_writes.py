# An nbdkit plugin (python): a file, read and written in place, whose
# writes into one byte range can be held back. It stands for one host's
# path to shared storage in which a write sits (a SAN queue, a multipath
# retry) and reaches the disk later, after the host is gone.
#
#   nbdkit python hold_writes.py file=BACKING hold=CONTROL
#
# While the file CONTROL exists and holds "FIRST END" (byte offsets), a
# write overlapping [FIRST, END) waits until CONTROL is removed, then goes
# to the file; reads and other writes go on meanwhile. CONTROL.held counts
# writes that started waiting, CONTROL.landed those that then reached the
# file (one line each, with the offset).
import builtins
import os
import time

import nbdkit

API_VERSION = 2

backing = None
control = None


def config(key, value):
    global backing, control
    if key == "file":
        backing = value
    elif key == "hold":
        control = value
    else:
        raise RuntimeError("hold_writes.py: unknown parameter " + key)


def config_complete():
    if backing is None or control is None:
        raise RuntimeError("hold_writes.py: file= and hold= are required")


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def open(readonly):
    return os.open(backing, os.O_RDONLY if readonly else os.O_RDWR)


def close(fd):
    os.close(fd)


def get_size(fd):
    return os.fstat(fd).st_size


def can_flush(fd):
    return True


# (`open` is the plugin's callback here: files are opened with builtins.)
def held_range():
    try:
        with builtins.open(control) as f:
            first, end = f.read().split()
            return int(first), int(end)
    except (OSError, ValueError):
        return None


def note(suffix, offset):
    with builtins.open(control + suffix, "a") as f:
        f.write("%d\n" % offset)


def pread(fd, buf, offset, flags):
    view = memoryview(buf)
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise RuntimeError("read beyond the end of " + backing)
        done += n


def pwrite(fd, buf, offset, flags):
    held = held_range()
    if held is not None and offset < held[1] and offset + len(buf) > held[0]:
        note(".held", offset)
        while os.path.exists(control):
            time.sleep(0.02)
        landed = True
    else:
        landed = False
    view = memoryview(buf)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    if landed:
        os.fsync(fd)
        note(".landed", offset)


def flush(fd, flags):
    os.fsync(fd)
