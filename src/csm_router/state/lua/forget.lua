-- `csm-router forget`: erase one thread of the person's, whole, in one script: its records,
-- the messages' records, bytes and Message-ID links, its forwards' links, and its place in
-- every index (the pool's counts stay right). ARGV[1]: {ref, forwards = [list keys]}.
-- Answers the messages it erased and the CSMs who had its forwards. Run again, it erases
-- what is left: a forget cut short is finished by running it again.
local ref = tostring(d.ref)
local tkey = P .. 'thread:' .. ref
local t = redis.call('HMGET', tkey, 'owner', 'account', 'covering_for')
local owner, account, covering = t[1] or '', t[2] or '', t[3] or ''
local msgkeys = redis.call('LRANGE', tkey .. ':msgs', 0, -1)
for _, m in ipairs(redis.call('LRANGE', tkey .. ':held', 0, -1)) do table.insert(msgkeys, m) end
local first = redis.call('HGET', tkey, 'first_msg')
if first then table.insert(msgkeys, first) end
local erased, mids = {}, {}
for _, m in ipairs(msgkeys) do
  local mkey = P .. 'msg:' .. m
  local mid = redis.call('HGET', mkey, 'message_id')
  if mid and mid ~= '' then
    table.insert(mids, mid)
    if redis.call('GET', P .. 'msgid:' .. mid) == ref then redis.call('DEL', P .. 'msgid:' .. mid) end
  end
  if redis.call('DEL', mkey, P .. 'raw:' .. m) > 0 then table.insert(erased, m) end
end
local csms = {}
for _, fkey in ipairs(d.forwards or {}) do
  table.insert(csms, string.sub(fkey, #tkey + #':forwards:' + 1))
  for _, mid in ipairs(redis.call('LRANGE', fkey, 0, -1)) do
    redis.call('DEL', P .. 'msgid:' .. mid)
  end
  redis.call('DEL', fkey)
end
if owner ~= '' then redis.call('SREM', P .. 'open:' .. owner, ref) end
if covering ~= '' then redis.call('SREM', P .. 'covered:' .. covering, ref) end
if account ~= '' then redis.call('ZREM', P .. 'account:' .. account, ref) end
for _, z in ipairs({'threads', 'held', 'due', 'late', 'quiet'}) do
  redis.call('ZREM', P .. z, ref)
end
redis.call('DEL', tkey, tkey .. ':events', tkey .. ':msgs', tkey .. ':held')
return cjson.encode({msgs = erased, csms = csms, mids = mids})
