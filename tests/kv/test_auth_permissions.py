"""Property: the merged-interval permission check equals a brute-force check over every key.

Keys come from a small alphabet and are at most 2 bytes long, so every interval endpoint (a key,
a range end, a single key's successor ``key + b"\\x00"``) is a string of at most 3 bytes over
the alphabet plus ``\\x00``. The first key a request range misses, if any, is its start or the
end of some granted interval, so checking every such string is an exact reference.
"""

from __future__ import annotations

from itertools import product

from hypothesis import given, settings
from hypothesis import strategies as st

from conclave.kv import auth as a
from conclave.kv.auth import AuthStore, Permission, PermType

ALPHABET = b"ab"
UNIVERSE = sorted({bytes(p) for n in range(4) for p in product(b"\x00" + ALPHABET, repeat=n)})
short_keys = st.binary(max_size=0) | st.lists(st.sampled_from(list(ALPHABET)), min_size=1, max_size=2).map(bytes)
ends = st.one_of(st.just(b""), st.just(b"\x00"), short_keys)


def valid(key: bytes, range_end: bytes) -> bool:
    return range_end in (b"", b"\x00") or range_end > key


def selects(key: bytes, range_end: bytes, k: bytes) -> bool:
    if range_end == b"\x00":
        return k >= key
    if range_end == b"" or range_end <= key:
        return k == key
    return key <= k < range_end


def brute(perms: list[tuple[str, Permission]], roles: set[str], key: bytes, range_end: bytes, need: PermType) -> bool:
    needs = [PermType.READ, PermType.WRITE] if need == PermType.READWRITE else [need]
    for t in needs:
        for k in UNIVERSE:
            if selects(key, range_end, k) and not any(
                role in roles and p.perm_type in (t, PermType.READWRITE) and selects(p.key, p.range_end, k)
                for role, p in perms
            ):
                return False
    return True


perm_lists = st.lists(
    st.tuples(st.sampled_from(["r1", "r2", "r3"]),
              st.builds(Permission, st.sampled_from(list(PermType)), short_keys, ends)).filter(
        lambda rp: valid(rp[1].key, rp[1].range_end)),
    max_size=8,
)


@settings(max_examples=400, deadline=None)
@given(perm_lists, st.sets(st.sampled_from(["r1", "r2", "r3"])),
       st.lists(st.tuples(short_keys, ends, st.sampled_from(list(PermType))), min_size=1, max_size=6))
def test_permitted_equals_brute_force(perms: list[tuple[str, Permission]], granted: set[str],
                                      requests: list[tuple[bytes, bytes, PermType]]) -> None:
    s = AuthStore()
    s.apply(a.UserAddRequest("u", b"h"))
    for role in ("r1", "r2", "r3"):
        s.apply(a.RoleAddRequest(role))
    for role in sorted(granted):
        s.apply(a.UserGrantRoleRequest("u", role))
    kept: dict[tuple[str, bytes, bytes], Permission] = {}
    for role, p in perms:
        s.apply(a.RoleGrantPermissionRequest(role, p))
        kept[(role, p.key, p.range_end)] = p  # a re-grant of the same range replaces the type
    effective = [(role, p) for (role, _, _), p in kept.items()]
    for key, range_end, need in requests:
        assert s.permitted("u", key, range_end, need) == brute(effective, granted, key, range_end, need), (
            key, range_end, need)
