-- Give a thread to another CSM (admin or `#reassign`); answers the message to re-forward.
local tkey = P .. 'thread:' .. d.ref
if redis.call('EXISTS', tkey) == 0 then
  return cjson.encode({error = 'no such thread'})
end
local old = set_owner(d.ref, d.target)
local released = release_messages(d.ref, d.target)
event(d.ref, 'reassigned', {owner = d.target, previous = old or '', why = d.why})
return cjson.encode({previous = old or '', last_msg = redis.call('HGET', tkey, 'last_msg'),
  released = released})
