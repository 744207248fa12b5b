-- Record one message's decision atomically: claim, thread, owner pick, links, history.
-- A message already recorded is never recorded again: the answer says 'dup' and its state.
local mkey = P .. 'msg:' .. d.msgkey
if redis.call('EXISTS', mkey) == 1 then
  local s = redis.call('HMGET', mkey, 'state', 'ref', 'owner')
  return cjson.encode({status = 'dup', state = s[1], ref = tonumber(s[2]), owner = s[3] or ''})
end

local function finish(state, ref, owner, extra)
  redis.call('HSET', mkey, 'state', state, 'ref', ref or '', 'owner', owner or '',
    'rule', d.rule, 'why', d.why, 'at', d.now, 'message_id', d.message_id or '',
    'uid', d.uid or '')
  local out = {status = 'new', state = state, ref = ref, owner = owner or ''}
  for k, x in pairs(extra or {}) do out[k] = x end
  return cjson.encode(out)
end

local ref = v(d.ref)

if d.action == 'ignore' or d.action == 'quarantine' then
  if ref then
    event(ref, d.action, {msg = d.message_id, rule = d.rule, why = d.why})
  end
  return finish(d.action == 'ignore' and 'ignored' or 'quarantined', ref, nil)
end

if d.action == 'reply' then
  local tkey = P .. 'thread:' .. ref
  local first = redis.call('HGET', tkey, 'first_response')
  if not first or first == '' then
    local created = tonumber(redis.call('HGET', tkey, 'created') or d.now)
    redis.call('HSET', tkey, 'first_response', d.now, 'due', '')
    redis.call('LPUSH', P .. 'stats:first-response:' .. d.target, d.now - created)
    redis.call('LTRIM', P .. 'stats:first-response:' .. d.target, 0, 999)
  end
  local old = set_owner(ref, d.target)
  local released = release_messages(ref, d.target)
  redis.call('HSET', tkey, 'last_activity', d.now)
  link_ids(ref, d.link_ids)
  event(ref, 'reply', {msg = d.message_id, owner = d.target, previous = old or '',
    rule = d.rule, why = d.why})
  return finish('done', ref, d.target, {released = released})
end

-- d.action == 'forward'
local new = false
if not ref then
  ref = redis.call('INCR', P .. 'seq')
  new = true
  redis.call('HSET', P .. 'thread:' .. ref, 'ref', ref, 'customer', d.customer,
    'customer_name', d.customer_name, 'account', d.account, 'subject', d.subject,
    'created', d.now, 'state', 'open', 'owner', '', 'due', d.now + d.sla_seconds,
    'first_response', '', 'first_msg', d.msgkey)
  redis.call('ZADD', P .. 'threads', d.now, ref)
  redis.call('ZADD', P .. 'account:' .. d.account, d.now, ref)
end
local tkey = P .. 'thread:' .. ref
redis.call('ZADD', P .. 'customer:' .. d.customer, d.now, ref)
redis.call('HSET', tkey, 'last_activity', d.now, 'last_msg', d.msgkey)
link_ids(ref, d.link_ids)

local state = redis.call('HGET', tkey, 'state')
if state == 'closed' then
  -- The customer wrote again: the thread reopens with a fresh first-response clock.
  redis.call('HSET', tkey, 'state', 'open', 'due', d.now + d.sla_seconds, 'first_response', '')
  event(ref, 'reopened', {msg = d.message_id})
end

local owner = v(d.target)
if not owner and state ~= 'held' then
  owner = pick()
end
if not owner then
  local held_new = redis.call('ZSCORE', P .. 'held', ref) == false
  local old = redis.call('HGET', tkey, 'owner')
  if old and old ~= '' then
    redis.call('SREM', P .. 'open:' .. old, ref)
  end
  redis.call('HSET', tkey, 'state', 'held', 'owner', '')
  if held_new then
    redis.call('ZADD', P .. 'held', d.now, ref)
  end
  redis.call('RPUSH', tkey .. ':held', d.msgkey)
  event(ref, 'held', {msg = d.message_id, rule = d.rule, why = d.why})
  return finish('held', ref, nil, {new_thread = new, held_new = held_new})
end

local previous = set_owner(ref, owner)
event(ref, new and 'new' or 'routed', {msg = d.message_id, owner = owner,
  previous = previous or '', rule = d.rule, why = d.why})
return finish('decided', ref, owner, {new_thread = new})
