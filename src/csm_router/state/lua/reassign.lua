-- Give a thread to another CSM (`csm-router reassign`), owing the forwards it implies.
local tkey = P .. 'thread:' .. d.ref
if redis.call('EXISTS', tkey) == 0 then
  return with_owed({error = 'no such thread'})
end
local t = redis.call('HMGET', tkey, 'owner', 'state', 'last_msg')
if t[1] == d.target and t[2] == 'open' then
  return with_owed({previous = d.target, unchanged = true})
end
local old = set_owner(d.ref, d.target)
redis.call('HDEL', tkey, 'covering_for')  -- an admin's choice: it stays there
if (redis.call('HGET', tkey, 'first_response') or '') == '' then
  start_clock(d.ref, due_for(d.ref))
end
local released = release_messages(d.ref, d.target)
local why = 'reassigned to you by an admin (was ' .. ((old and old ~= '') and old or 'nobody') .. ')'
local sent = owe_deliveries(released, d.target, why, 'admin-' .. d.now)
local last = t[3]
if last then table.insert(sent, owe_delivery(last, d.target, why, 'admin-' .. d.now)) end
event(d.ref, 'reassigned', {owner = d.target, previous = old or '', why = d.why,
  sends = sends_of(sent)})
return with_owed({previous = old or '', last_msg = last or '', released = released})
