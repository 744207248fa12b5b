-- A forward or a Support handoff failed for good: the thread must not stay with someone
-- who never got it. It moves to another CSM (or back to the pool from Support), or is
-- held; the lead is told. `d.kind` is 'deliver' or 'support'.
local ref = d.ref
local tkey = P .. 'thread:' .. ref
if redis.call('EXISTS', tkey) == 0 then return with_owed({moved = false}) end
local t = redis.call('HMGET', tkey, 'owner', 'state')
local owner, state = t[1] or '', t[2] or ''
local moved_to, sent = '', nil
local applies = (d.kind == 'deliver' and owner == d.failed and state == 'open')
  or (d.kind == 'support' and state == 'support')
if applies then
  local why
  if d.kind == 'deliver' then
    d.exclude = d.failed
    why = 'could not be delivered to ' .. d.failed .. ' (' .. d.error .. '): moved to you'
  else
    why = 'the handoff to Support failed (' .. d.error .. '): back with Customer Success'
  end
  local next_owner = nil
  if d.kind == 'support' and owner ~= '' and not is_away(owner) and has_room(owner) then
    next_owner = owner
  else
    next_owner = pick(account_of(ref))
  end
  if next_owner then
    set_owner(ref, next_owner)
    start_clock(ref, due_for(ref))
    sent = owe_delivery(d.msgkey, next_owner, why, 'undeliverable-' .. d.kind .. '-' .. d.failed)
    moved_to = next_owner
  else
    hold(ref, d.msgkey, d.now)
    owe_overflow(ref)
  end
  event(ref, 'undeliverable', {owner = moved_to, previous = d.failed, why = why,
    sends = sends_of({sent})})
end
if d.has_lead then
  owe('trouble', {ref = tonumber(ref), kind = d.kind, failed = d.failed, error = d.error,
    moved_to = moved_to}, ref, d.kind, d.failed, d.msgkey)
end
return with_owed({moved = applies, owner = moved_to})
