"""CrypTen's own unit tests on pmpc's runtime: ``bench/crypten_tests.sh`` puts this directory first
on ``PYTHONPATH``, so every process of a run (pytest, and each party and dealer that CrypTen's
``MultiProcessTestCase`` spawns) imports it at start-up, before the tests import crypten.

CrypTen's harness starts each party with ``RANK``, ``WORLD_SIZE`` and ``RENDEZVOUS`` set and calls
``crypten.init()``; its dealer process calls ``crypten.mpc.provider.TTPServer()``. Here, with
pmpc's patches in (``pmpc.mpc.crypten_compat``):

* ``crypten.init()`` in a process that is not in a session yet joins through
  :func:`pmpc.mpc.parties.join_from_env`: pmpc's direct TLS links, OS-seeded AES streams, exact
  truncation, FSS comparisons, and its dealer's JSON requests instead of CrypTen's pickles;
* ``TTPServer()`` joins as the dealer and runs pmpc's dealer loop (:func:`pmpc.mpc.dealer.serve`);
* ``crypten.uninit()`` at party 0 ends the dealer's session first (CrypTen's own would pickle it).

The tests themselves are not changed."""
from pmpc.mpc import crypten_compat as cc  # first: its torch.onnx shim lets crypten import
from pmpc.mpc import dealer, parties

crypten = cc.crypten
_init, _uninit = crypten.init, crypten.uninit
_joining = []  # pmpc's own join calls crypten.init() once more: that call is CrypTen's


def init(*args, **kwargs):
    if _joining or cc.comm.is_initialized():
        return _init(*args, **kwargs)
    _joining.append(True)
    try:
        parties.join_from_env()
    finally:
        _joining.pop()


def uninit():
    dealer.terminate()  # party 0 only, and only while a dealer is in the session
    return _uninit()


def ttp_server():
    parties.join_from_env(provider="TTP")
    try:
        dealer.serve()
    finally:
        cc.shutdown_party()


crypten.init, crypten.uninit = init, uninit
crypten.mpc.provider.TTPServer = ttp_server
