-- The first-response sweep: remind owners whose answer is nearly due, and move threads
-- whose answer is overdue to the next available CSM, who gets a fresh clock (and is
-- reminded and escalated in turn). Each due time is reminded and escalated once.
local out = {reminders = {}, escalations = {}}
local refs = redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', d.now + d.remind_before)
for _, ref in ipairs(refs) do
  local tkey = P .. 'thread:' .. ref
  local t = redis.call('HMGET', tkey, 'owner', 'due', 'reminded', 'escalated', 'state',
    'last_msg')
  local owner, due = t[1] or '', tonumber(t[2])
  if not due or t[5] ~= 'open' then
    redis.call('ZREM', P .. 'due', ref)  -- answered, closed or with Support meanwhile
  elseif due <= d.now then
    redis.call('ZREM', P .. 'due', ref)
    d.exclude = owner
    local next_owner = pick(account_of(ref))
    redis.call('HSET', tkey, 'escalated', (tonumber(t[4]) or 0) + 1, 'overdue_at', d.now)
    local why = 'first response overdue with ' .. (owner ~= '' and owner or 'nobody')
    if next_owner then
      set_owner(ref, next_owner)
      start_clock(ref, due_for(ref))
      owe_delivery(t[6], next_owner, why .. ': escalated to you', 'escalated-' .. due)
    end
    if d.has_lead then
      owe('escalate', {ref = tonumber(ref), previous = owner, owner = next_owner or '',
        due = due}, ref, due)
    end
    event(ref, 'escalated', {owner = next_owner or '', previous = owner,
      why = 'first response overdue'})
    table.insert(out.escalations, {ref = tonumber(ref), previous = owner,
      owner = next_owner or '', due = due, msg = t[6] or ''})
  elseif t[3] ~= '1' then
    redis.call('HSET', tkey, 'reminded', '1')
    owe('remind', {ref = tonumber(ref), owner = owner, due = due}, ref, owner, due)
    table.insert(out.reminders, {ref = tonumber(ref), owner = owner, due = due})
  end
end
return with_owed(out)
