"""The compile gates' readers (native/cuda/check_gates.py) on ptxas and cuobjdump output as the CUDA
13.0 toolchain prints it: a spill is seen, and an opcode is read whatever its predicate and suffixes."""

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parent.parent / "native" / "cuda" / "check_gates.py"
_SPEC = importlib.util.spec_from_file_location("check_gates", _PATH)
gates = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gates)

PTXAS = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3onePK6__half' for 'sm_80'
ptxas info    : Function properties for _Z3onePK6__half
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 1 barriers, 512 bytes smem, 368 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3twoPKa' for 'sm_90a'
ptxas info    : Function properties for _Z3twoPKa
    40 bytes stack frame, 36 bytes spill stores, 28 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers
"""

SASS = """\
        /*0110*/                   LDSM.16.M88.4 R4, [R4] ;                     /* 0x000000000404783b */
        /*0120*/              @!P0 LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR4][R6.64] ;
        /*0130*/                   HMMA.16816.F32 R8, R12, R16, R8 ;
        /*0140*/               @P1 BRA 0x200 ;
"""


def test_ptxas_spills_and_registers_are_read():
    one, two = gates.parse_ptxas(PTXAS)
    assert (one["name"], one["arch"], one["registers"], one["spill_stores"]) == ("_Z3onePK6__half", "sm_80", 12, 0)
    assert (two["arch"], two["registers"], two["spill_stores"], two["spill_loads"]) == ("sm_90a", 255, 36, 28)
    assert gates.accepted_spill(two["name"], "sm_90a") is None  # no spill is accepted today


def test_sass_opcodes_are_read_past_predicates():
    assert gates.sass_opcodes(SASS) == {"LDSM", "LDGSTS", "HMMA", "BRA"}
