"""The replicated state machine of a Conclave member, as one pure module.

Every member (the server's driver ``conclave.server.node``, the simulator's members,
``conclave snapshot restore``, Maintenance.Snapshot) runs this one machine and its one image
format. No I/O and no clock here: time arrives as an argument.

API::

    from conclave.machine import StateMachine, Member, Applied, Result, entry

    sm = StateMachine.bootstrap(cluster_id, members)          # a new cluster
    sm = StateMachine.restore(image, index=snap_index)        # from an image (current or older servers')
    image = sm.snapshot()

    # proposals (data of raft NORMAL entries), built by drivers:
    entry.encode_batch(origin, [(seq, command), ...])          # kv commands (conclave.kv.types requests)
    entry.frame_encoded(origin, [encode_command(c, seq), ...]) # the same, commands pre-encoded
    entry.encode_member_attrs(origin, seq, member)             # publish name / URLs
    entry.encode_lease_expiry(lease_id)                        # leader-proposed revoke, seq 0
    entry.encode_conf_context(origin, seq, members)            # ConfChange.context
    entry.seq_base(epoch)                                      # first seq of a run (epoch persisted, +1 per start)

    out: Applied = sm.apply(raft_entry, now_ms)  # committed entries in order; <= applied_index ignored
    out.results          # [Result(origin, seq, command, response, error, events)]
    out.events           # all watch events, revision order
    out.members_changed; out.removed             # conf change / member attrs effects

    sm.applied_index; sm.store; sm.members; sm.cluster_id; sm.hash()
    sm.auth              # conclave.kv.auth.AuthStore: users, roles, check(); replicated, in the image
    # auth: propose kv.command.Checked(sm.auth.revision, cmd, user) once sm.auth.revision > 0 (kv.auth)
    sm.leases            # conclave.kv.lease.Lessor: promote(now, extend)/demote()/renew/expired(now)

    # the rules, defined once (every API path calls them before proposing):
    limits = rules.Limits(max_request_bytes=..., quota_backend_bytes=..., max_txn_ops=...,
                          min_lease_ttl_s=rules.min_lease_ttl_s(election_timeout_ms))
    req = sm.validate(req, limits)        # EtcdError with etcd's wording; a lease TTL raised to the minimum
    rules.check_size(framed_bytes, limits)  # --max-request-bytes
    rules.over_quota(sm.store, limits)      # --quota-backend-bytes: time to raise NOSPACE
"""

from conclave.machine import entry, rules
from conclave.machine.entry import EntryError, Member
from conclave.machine.state import Applied, ImageError, Result, StateMachine

__all__ = ["Applied", "EntryError", "ImageError", "Member", "Result", "StateMachine", "entry", "rules"]
