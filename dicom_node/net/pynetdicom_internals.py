"""Every use of pynetdicom's private parts, in one place, for one tested version range.

The listener and the sender need a few things pynetdicom offers no public way to do.
Each is one function here, named for what it does; no other module of the node touches
a private name of pynetdicom, and ``tests/node/test_pynetdicom_internals.py`` fails
loudly when the installed pynetdicom is outside :data:`TESTED_VERSIONS` or lacks one of
the parts (``pyproject.toml`` bounds the pin to the same range).

- `receive_into_files`: stream each received C-STORE data set into a file the caller
  opens (``_config.STORE_RECV_CHUNKED_DATASET``; ``dimse_messages.NamedTemporaryFile``,
  which pynetdicom calls to open it);
- `send_from_files`: send a file from disk without loading it whole
  (``_config.STORE_SEND_CHUNKED_DATASET``);
- `create_association`: the association of a request handler that runs its own
  ``handle`` (``RequestHandler._create_association``);
- `swap_socket_class`, `close_socket`: run an association's DUL on a socket class of
  the node's (the instance's ``__class__``; ``AssociationSocket._shutdown_socket``);
- `register_server`: make ``AE.shutdown`` stop a server built with ``make_server``
  (``AE._servers``);
- `copy_context`: copy a presentation context cheaply (``_transfer_syntax``);
- `unfinished_transfer_files`: the temp files of an association's transfers in
  progress (``_data_set_file`` of the message being read, ``_dataset_file`` of
  primitives never served).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import pynetdicom
from pynetdicom import AE, _config, dimse_messages
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

# Major.minor versions whose private parts this module was checked against.
TESTED_VERSIONS = ("3.0",)

SocketClass = TypeVar("SocketClass", bound=AssociationSocket)


def untested_version() -> str | None:
    """The installed pynetdicom version when it is not one this module was checked
    against; None when it is."""
    version = pynetdicom.__version__
    return None if ".".join(version.split(".")[:2]) in TESTED_VERSIONS else version


@contextmanager
def receive_into_files(open_file: Callable[..., Any]) -> Iterator[None]:
    """While the block runs, pynetdicom streams every received C-STORE data set into a
    file opened by ``open_file(**NamedTemporaryFile keyword arguments)`` and hands the
    handler its path (``event.dataset_path``), instead of decoding it in memory."""
    flag = _config.STORE_RECV_CHUNKED_DATASET
    original = dimse_messages.NamedTemporaryFile
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = open_file
    try:
        yield
    finally:
        dimse_messages.NamedTemporaryFile = original
        _config.STORE_RECV_CHUNKED_DATASET = flag


def send_from_files() -> None:
    """Make C-STORE of a file path stream it from disk in its own encoding (process-wide:
    every sender of the node sends files so)."""
    _config.STORE_SEND_CHUNKED_DATASET = True


def create_association(handler: RequestHandler) -> Association:
    """The association for a request handler's connection, as pynetdicom's own
    ``handle`` creates it."""
    return handler._create_association()


def swap_socket_class(assoc: Association, cls: type[SocketClass]) -> SocketClass:
    """Make the association's socket an instance of ``cls`` (a subclass of pynetdicom's
    ``AssociationSocket`` that adds no state of its own in ``__init__``); the socket.

    Raises
    ------
    ValueError
        When the association has no socket.
    """
    sock = assoc.dul.socket
    if sock is None:
        raise ValueError("the association has no socket")
    sock.__class__ = cls
    return cast(SocketClass, sock)


def close_socket(sock: AssociationSocket) -> None:
    """Shut the socket down and close it as pynetdicom does, so that its DUL ends the
    association (transport closed)."""
    sock._shutdown_socket()


def register_server(ae: AE, server: ThreadedAssociationServer) -> None:
    """Let ``ae.shutdown()`` stop ``server`` too, as for one from ``ae.start_server``."""
    ae._servers.append(server)


def copy_context(context: PresentationContext) -> PresentationContext:
    """A copy of ``context`` that shares its immutable UIDs but has its own transfer
    syntax list (what pynetdicom's deep copy yields, at a fraction of the cost)."""
    duplicate = copy.copy(context)
    duplicate._transfer_syntax = list(context._transfer_syntax)
    return duplicate


def unfinished_transfer_files(assoc: Association) -> list[Any]:
    """The open temp files of the message being received and of messages never served."""
    files = []
    message = assoc.dimse.message
    if message is not None and message._data_set_file is not None:
        files.append(message._data_set_file)
    for _context_id, primitive in list(assoc.dimse.msg_queue.queue):
        if getattr(primitive, "_dataset_file", None) is not None:
            files.append(primitive._dataset_file)
    return files
