-- The outbox (see outbox.py), prepended after common.lua. Every send a decision implies is
-- owed here, in the same script as the decision, under an id made of what makes it unique:
-- a repeat owes nothing.
-- `OWED` collects what this script owed, so the caller can offer it to a worker at once.
local OWED = {}

-- Two 31-bit polynomial hashes: 62 bits, exact in Lua's doubles, and the same on every
-- Redis (redis.sha1hex is not available everywhere the scripts run).
local function digest(s)
  local a, b = 7, 11
  for i = 1, #s do
    local c = string.byte(s, i)
    a = (a * 131 + c) % 2147483629
    b = (b * 257 + c) % 2147483587
  end
  return string.format('%08x%08x', a, b)
end

-- A dead letter never stops a later decision from owing the same send afresh: the id's
-- next generation (`<id>-g2`, `<id>-g3`...) is owed instead, and the dead one stays listed in
-- `csm-router failed`. A pending or done one is that send already: nothing more is owed.
local function owe(kind, args, ...)
  local parts = {...}
  for i, x in ipairs(parts) do parts[i] = tostring(x) end
  local base = kind .. '-' .. digest(table.concat(parts, '|'))
  local id, ekey, generation = base, P .. 'outbox:e:' .. base, 1
  while redis.call('HGET', ekey, 'state') == 'dead' do
    generation = generation + 1
    id = base .. '-g' .. generation
    ekey = P .. 'outbox:e:' .. id
  end
  if redis.call('EXISTS', ekey) == 1 then return id end
  redis.call('HSET', ekey, 'kind', kind, 'args', cjson.encode(args), 'attempts', 0,
    'created', d.now, 'state', 'pending')
  -- Due at once by the wall clock, even when a sweep runs as if at another time (--at).
  redis.call('ZADD', P .. 'outbox', d.wall or d.now, id)
  table.insert(OWED, id)
  return id
end

-- A forward of `msg` to `owner`. Answers {msg, entry id}: the event that caused it keeps
-- that pair (`sends`), so the thread page finds the forward's entry without a scan.
local function owe_delivery(msg, owner, why, cause)
  if not msg or msg == '' then return nil end
  return {msg, owe('deliver', {msgkey = msg, owner = owner, why = why or '',
    cause = cause or ''}, msg, owner, cause or '')}
end

local function owe_deliveries(msgs, owner, why, cause)
  local sends = {}
  for _, m in ipairs(msgs) do table.insert(sends, owe_delivery(m, owner, why, cause)) end
  return sends
end

-- An event's `sends`: nil when none (cjson would write an empty table as an object).
local function sends_of(list)
  if list and #list > 0 then return list end
  return nil
end

-- A Support handoff, and with `tell` the customer's note and the CSM's copy: each a send of
-- its own, so a refused note is a dead letter of its own and undoes nothing.
-- Both wait for the handoff's own entry (`handoff`): they say that Support has it.
local function owe_support(msgkey, ref, cause, tell)
  local handoff = owe('support', {msgkey = msgkey, ref = tonumber(ref), cause = cause},
    msgkey, cause)
  if not tell then return end
  owe('support-note', {msgkey = msgkey, ref = tonumber(ref), cause = cause,
    handoff = handoff}, msgkey, cause)
  local csm = redis.call('HGET', P .. 'thread:' .. ref, 'owner') or ''
  if csm ~= '' then
    owe('support-copy', {msgkey = msgkey, ref = tonumber(ref), cause = cause, csm = csm,
      handoff = handoff}, msgkey, cause, csm)
  end
end

-- The lead hears once per thread that nobody could take it (if there is a lead to tell).
local function owe_overflow(ref)
  if d.has_lead then
    owe('overflow', {ref = tonumber(ref)}, ref, redis.call('HGET', P .. 'thread:' .. ref, 'created') or '')
  end
end

local function with_owed(out)
  out.owed = OWED
  return cjson.encode(out)
end
