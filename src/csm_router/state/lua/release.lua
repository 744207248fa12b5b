-- Whoever is back from being away (their `--until` passed) gets back the threads their
-- backup covered.
local returned = {}
for _, addr in ipairs(redis.call('HKEYS', P .. 'backup')) do
  if not away_marked(addr) then
    returned[addr] = return_covered(addr)
  end
end

-- Hand held threads, oldest first, to whoever can take them now; stop at the first miss.
local out = {}
local refs = redis.call('ZRANGE', P .. 'held', 0, d.limit - 1)
for _, ref in ipairs(refs) do
  local owner = pick_for(ref)
  if not owner then break end
  local tkey = P .. 'thread:' .. ref
  -- A thread held when its answer was overdue may go back to a CSM it was forwarded to
  -- before: its own cause makes this a new forward, not that one again.
  local cause = redis.call('HGET', tkey, 'held_cause') or ''
  redis.call('HDEL', tkey, 'held_cause')
  set_owner(ref, owner)
  start_clock(ref, due_for(ref))
  local msgs = release_messages(ref, owner)
  local sent = owe_deliveries(msgs, owner, 'held until a CSM could take it', cause)
  event(ref, 'released', {owner = owner, why = 'a CSM became available',
    sends = sends_of(sent)})
  table.insert(out, {ref = tonumber(ref), owner = owner, msgs = msgs})
end
return with_owed({released = out, returned = returned})
