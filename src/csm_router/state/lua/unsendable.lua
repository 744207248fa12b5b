-- A mail cannot go out because of the message's own content (rendering it failed, or the
-- relay refused its text): sending it again, or to another CSM, fails the same way. The
-- message is quarantined with the reason, once; the thread stays where it is; the lead is
-- told once. Safe to run again: a worker that dies before dead-lettering its entry does.
local mkey = P .. 'msg:' .. d.msgkey
if redis.call('EXISTS', mkey) == 0 then return with_owed({first = false}) end
local ref = v(d.ref)
local first = redis.call('HGET', mkey, 'state') ~= 'quarantined'
if first then
  redis.call('HSET', mkey, 'state', 'quarantined', 'rule', 'unsendable', 'why', d.error)
  count('quarantined', 'unsendable')
  if ref then
    event(ref, 'quarantined', {msg = redis.call('HGET', mkey, 'message_id') or '',
      rule = 'unsendable', why = d.error})
  end
end
if ref and d.has_lead then
  owe('trouble', {ref = tonumber(ref), kind = 'unsendable', failed = d.failed,
    error = d.error, moved_to = d.failed}, ref, 'unsendable', d.msgkey)
end
return with_owed({first = first})
