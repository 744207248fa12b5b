-- The periodic sweep, in bounded batches (`d.batch` each; the rest waits for the next run):
-- remind owners whose first answer is nearly due; move threads whose answer is overdue to
-- the next available CSM, who gets a fresh clock (and is reminded and escalated in turn),
-- or hold them when nobody can take one; close answered threads quiet for `d.close_after`.
-- Each due time is reminded and escalated once.
local out = {reminders = {}, escalations = {}, held = {}, closed = {}}

-- The lead's "Latest decisions" (csm:recent, as lua/record.lua writes it, newest first,
-- 50 kept): a move the clock made is a decision too.
local function recent(ref, state, owner, why)
  redis.call('LPUSH', P .. 'recent', cjson.encode({at = d.now, ref = tonumber(ref),
    message_id = '', subject = redis.call('HGET', P .. 'thread:' .. ref, 'subject') or '',
    state = state, action = 'escalate', owner = owner, rule = 'first-response',
    why = why}))
  redis.call('LTRIM', P .. 'recent', 0, 49)
end

local function escalate(ref, tkey, t, owner, due)
  redis.call('ZREM', P .. 'due', ref)
  mark_late(ref, due)
  d.exclude = owner
  local next_owner = pick(account_of(ref))
  redis.call('HSET', tkey, 'escalated', (tonumber(t[4]) or 0) + 1, 'overdue_at', d.now)
  local why = 'first response overdue with ' .. (owner ~= '' and owner or 'nobody')
  local sent = nil
  if next_owner then
    set_owner(ref, next_owner)
    start_clock(ref, due_for(ref))
    sent = owe_delivery(t[6], next_owner, why .. ': escalated to you', 'escalated-' .. due)
  else
    -- Nobody to move it to: held, its last message owed to whoever frees up first. Scored
    -- by when it opened, it goes out before threads that came after it.
    redis.call('HSET', tkey, 'due', '', 'held_cause', 'overdue-' .. due)
    hold(ref, t[6], tonumber(t[7]) or due)
    table.insert(out.held, {ref = tonumber(ref), previous = owner, due = due})
  end
  -- The lead hears once per due time; with nobody to move to, the mail says it is held.
  if d.has_lead then
    owe('escalate', {ref = tonumber(ref), previous = owner, owner = next_owner or '',
      due = due}, ref, due)
  end
  event(ref, 'escalated', {owner = next_owner or '', previous = owner,
    why = next_owner and 'first response overdue'
      or 'first response overdue, nobody available: held', sends = sends_of({sent})})
  recent(ref, next_owner and 'escalated' or 'held', next_owner or '',
    next_owner and why .. ': escalated' or why .. ': nobody available, held')
  table.insert(out.escalations, {ref = tonumber(ref), previous = owner,
    owner = next_owner or '', due = due, msg = t[6] or ''})
end

local refs = redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', d.now + d.remind_before,
  'LIMIT', 0, d.batch)
for _, ref in ipairs(refs) do
  local tkey = P .. 'thread:' .. ref
  local t = redis.call('HMGET', tkey, 'owner', 'due', 'reminded', 'escalated', 'state',
    'last_msg', 'opened', 'created')
  t[7] = t[7] or t[8]
  local owner, due = t[1] or '', tonumber(t[2])
  if not due or t[5] ~= 'open' then
    redis.call('ZREM', P .. 'due', ref)  -- answered, closed or with Support meanwhile
  elseif due <= d.now then
    escalate(ref, tkey, t, owner, due)
  elseif t[3] ~= '1' then
    redis.call('HSET', tkey, 'reminded', '1')
    owe('remind', {ref = tonumber(ref), owner = owner, due = due}, ref, owner, due)
    table.insert(out.reminders, {ref = tonumber(ref), owner = owner, due = due})
  end
end

-- Quiet threads close by themselves and free their CSM's capacity.
local quiet = redis.call('ZRANGEBYSCORE', P .. 'quiet', '-inf', d.now - d.close_after,
  'LIMIT', 0, d.batch)
for _, ref in ipairs(quiet) do
  local t = redis.call('HMGET', P .. 'thread:' .. ref, 'state', 'due', 'owner')
  if t[1] ~= 'open' or (t[2] or '') ~= '' then
    redis.call('ZREM', P .. 'quiet', ref)  -- moved on meanwhile: not a quiet thread
  else
    park(ref, 'closed')
    event(ref, 'closed', {owner = t[3] or '', why = 'quiet for ' .. d.close_label})
    table.insert(out.closed, {ref = tonumber(ref), owner = t[3] or ''})
  end
end
return with_owed(out)
