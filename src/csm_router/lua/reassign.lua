-- Give a thread to another CSM (`csm-router reassign`); answers the messages to re-forward.
local tkey = P .. 'thread:' .. d.ref
if redis.call('EXISTS', tkey) == 0 then
  return cjson.encode({error = 'no such thread'})
end
local old = set_owner(d.ref, d.target)
if (redis.call('HGET', tkey, 'first_response') or '') == '' then
  start_clock(d.ref, d.now + d.sla_seconds)
end
local released = release_messages(d.ref, d.target)
event(d.ref, 'reassigned', {owner = d.target, previous = old or '', why = d.why})
return cjson.encode({previous = old or '', last_msg = redis.call('HGET', tkey, 'last_msg'),
  released = released})
