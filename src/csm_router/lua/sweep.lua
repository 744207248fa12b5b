-- The first-response sweep: remind owners whose answer is nearly due, and move threads
-- whose answer is overdue to the next available CSM. Each happens once per thread.
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
    if t[4] ~= '1' then
      d.exclude = owner
      local next_owner = pick()
      redis.call('HSET', tkey, 'escalated', '1', 'overdue_at', d.now)
      if next_owner then
        set_owner(ref, next_owner)
        -- The new owner gets a fresh clock, but a thread is escalated only once.
        redis.call('HSET', tkey, 'due', d.now + d.sla_seconds, 'reminded', '')
      end
      event(ref, 'escalated', {owner = next_owner or '', previous = owner,
        why = 'first response overdue'})
      table.insert(out.escalations, {ref = tonumber(ref), previous = owner,
        owner = next_owner or '', due = due, msg = t[6] or ''})
    end
  elseif t[3] ~= '1' then
    redis.call('HSET', tkey, 'reminded', '1')
    table.insert(out.reminders, {ref = tonumber(ref), owner = owner, due = due})
  end
end
return cjson.encode(out)
