"""The bridge's Redis: the one package that names Redis keys and holds Lua scripts.

- ``keys``: every key name, ours (``pumble-bridge:<queue>:…``) and the one of rq's we read that
  rq has no method for; the others of rq's come from rq's own objects (``Queue.key``,
  ``Job.key_for``, ``RQScheduler.get_locking_key``).
- ``scripts``: every Lua script, each with its KEYS, ARGV and answer.
- ``accept``: the receiver's one atomic write, which writes rq's job records by hand.

Everything else asks these for a key or a script, and nothing else writes rq's records.
"""
