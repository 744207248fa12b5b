-- Record one message's decision atomically: claim, thread, owner pick, links, history and
-- any command. A message already recorded is never recorded again: the answer says 'dup'.
local mkey = P .. 'msg:' .. d.msgkey
if redis.call('EXISTS', mkey) == 1 then
  local s = redis.call('HMGET', mkey, 'state', 'ref', 'owner')
  return cjson.encode({status = 'dup', state = s[1], ref = tonumber(s[2]), owner = s[3] or ''})
end

-- followup: the sends the decision implies, owed in the outbox by `finish`.
local followup = {why = d.why_deliver}
if v(d.notice) then followup.notice = d.notice end

-- Owe, in this same script, every send the decision implies (see outbox.py).
local function owe_followup(ref)
  if followup.owner then
    for _, other in ipairs(followup.deliver or {}) do
      -- A message forwarding itself is its first forward; others are re-forwards.
      owe_delivery(other, followup.owner, followup.why, other == d.msgkey and '' or d.msgkey)
    end
  end
  if followup.support and ref then
    local cause = followup.support == d.msgkey and '' or d.msgkey
    owe_support(followup.support, ref, cause, followup.tell)
  end
  if followup.overflow then owe_overflow(followup.overflow) end
  if followup.notice then owe('notice', {msgkey = d.msgkey}, d.msgkey) end
end

local function tally(state, owner)
  count('seen')
  if d.action == 'quarantine' or d.action == 'ignore' then
    count(d.action == 'ignore' and 'ignored' or 'quarantined', d.rule)
  else
    count('routed', state == 'held' and 'held' or d.action, d.rule)
    if d.action == 'forward' and owner then count('decision', owner) end
  end
end

local function finish(state, ref, owner, extra)
  owe_followup(ref)
  tally(state, owner)
  redis.call('HSET', mkey, 'state', state, 'ref', ref or '', 'owner', owner or '',
    'action', d.action, 'rule', d.rule, 'why', d.why, 'at', d.now,
    'message_id', d.message_id or '', 'uid', d.uid or '', 'subject', d.subject or '',
    'followup', cjson.encode(followup), 'looks_technical', d.looks_technical or '')
  redis.call('EXPIRE', mkey, KEEP_SECONDS)
  -- The newest decisions, for the lead's status page.
  redis.call('LPUSH', P .. 'recent', cjson.encode({at = d.now, ref = ref or cjson.null,
    message_id = d.message_id or '', subject = d.subject or '', state = state,
    action = d.action, owner = owner or '', rule = d.rule, why = d.why}))
  redis.call('LTRIM', P .. 'recent', 0, 49)
  local out = {status = 'new', state = state, ref = ref, owner = owner or '', followup = followup}
  for k, x in pairs(extra or {}) do out[k] = x end
  return with_owed(out)
end

local ref = v(d.ref)
local command = v(d.command)

-- No sequence: Redis lost its data since a router last looked. INCR would start at 1
-- and hand out references customers already hold; the router numbers again first. Asked
-- before anything is written, as an error undoes none of a script's writes.
if not ref and (d.action == 'forward' or d.action == 'support')
    and redis.call('EXISTS', P .. 'seq') == 0 then
  return redis.error_reply('NOSEQ no thread numbering in Redis (was its data lost?): '
    .. 'the router starts it again above every earlier reference')
end

-- The message's bytes, for its forward and a later reader of the thread, end with
-- `raw_ttl`; a thread held with them owed keeps them until released (common.lua `hold`).
if (d.raw_ttl or 0) > 0 then
  redis.call('SET', P .. 'raw:' .. d.msgkey, ARGV[2], 'EX', d.raw_ttl)
end

if d.action == 'ignore' or d.action == 'quarantine' then
  if ref then
    event(ref, d.action, {msg = d.message_id, rule = d.rule, why = d.why})
    link_ids(ref, d.link_ids)  -- a customer's answer to it still finds the thread
  end
  return finish(d.action == 'ignore' and 'ignored' or 'quarantined', ref, nil)
end

if d.action == 'reply' or d.action == 'command' then
  local tkey = P .. 'thread:' .. ref
  local old = redis.call('HGET', tkey, 'owner')
  local state = 'done'
  if d.action == 'reply' then
    local first = redis.call('HGET', tkey, 'first_response')
    local took = nil
    if not first or first == '' then
      -- Measured from when the thread (re)opened, not from its very first message.
      local created = tonumber(redis.call('HGET', tkey, 'opened') or
        redis.call('HGET', tkey, 'created') or d.now)
      redis.call('HSET', tkey, 'first_response', d.now)
      -- When it opened and was answered: read in the pool's working time (report.py).
      redis.call('LPUSH', P .. 'stats:first-response:' .. d.target, created .. ':' .. d.now)
      redis.call('LTRIM', P .. 'stats:first-response:' .. d.target, 0, 999)
      took = d.now - created
    end
    stop_clock(ref)
    local tstate = redis.call('HGET', tkey, 'state')
    if tstate == 'closed' or tstate == 'support' then
      -- A CSM writing in a parked thread takes it, but does not reopen or recall it.
      redis.call('HSET', tkey, 'owner', d.target)
      served(ref, d.target)
      took(d.target, old)
    else
      set_owner(ref, d.target)
      quiet_from(ref, d.now)  -- answered: it closes by itself if nobody writes again
      followup.deliver = release_messages(ref, d.target)
      followup.owner = d.target
    end
    event(ref, 'reply', {msg = d.message_id, owner = d.target, previous = old or '',
      rule = d.rule, why = d.why, first_response = took,
      -- report.py measures it in working time, as the target is.
      answered = took and (d.now - took) .. ':' .. d.now or nil})
    add_message(ref, d.msgkey)
  end
  if command and not v(d.error) then
    local name = command.name
    if name == 'close' then
      park(ref, 'closed')
      event(ref, 'closed', {owner = d.target, why = 'closed with #close'})
    elseif name == 'support' then
      park(ref, 'support')
      followup.support = redis.call('HGET', tkey, 'last_msg')
      followup.tell = true
      event(ref, 'to-support', {owner = d.target, why = '#support by ' .. d.target})
    elseif name == 'reassign' then
      set_owner(ref, command.argument)
      redis.call('HDEL', tkey, 'covering_for')  -- a person's choice: it stays there
      start_clock(ref, due_for(ref))
      -- Messages held for the thread go along with the last one, never dropped.
      local msgs = release_messages(ref, command.argument)
      local last = redis.call('HGET', tkey, 'last_msg')
      local listed = false
      for _, m in ipairs(msgs) do listed = listed or m == last end
      if last and not listed then table.insert(msgs, last) end
      followup.deliver = msgs
      followup.owner = command.argument
      event(ref, 'reassigned', {owner = command.argument, previous = d.target,
        why = '#reassign by ' .. d.target})
    elseif name == 'success' then
      -- Back to the CSM who had it, if they can take it; otherwise the next one.
      local owner = old
      if not owner or owner == '' or is_away(owner) or not has_room(owner) then
        owner = pick(account_of(ref))
      end
      local last = redis.call('HGET', tkey, 'last_msg')
      if owner then
        set_owner(ref, owner)
        start_clock(ref, due_for(ref))
        followup.deliver = {last}
        followup.owner = owner
      else
        hold(ref, last, d.now)
        followup.overflow = ref
      end
      event(ref, 'from-support', {owner = owner or '', why = '#success by Support'})
    end
    state = 'decided'
  end
  redis.call('HSET', tkey, 'last_activity', d.now)
  link_ids(ref, d.link_ids)
  return finish(state, ref, d.target)
end

-- d.action == 'forward' or 'support': a customer's message, in a new or known thread
local new = false
if not ref then
  ref = redis.call('INCR', P .. 'seq')
  new = true
  redis.call('HSET', P .. 'thread:' .. ref, 'ref', ref, 'customer', d.customer,
    'customer_name', d.customer_name, 'account', d.account, 'subject', d.subject,
    'created', d.now, 'state', 'open', 'owner', '', 'first_response', '',
    'first_msg', d.msgkey)
  if v(d.language) then redis.call('HSET', P .. 'thread:' .. ref, 'language', d.language) end
  index(P .. 'threads', ref)
  index(P .. 'account:' .. d.account, ref)
end
local tkey = P .. 'thread:' .. ref
index(P .. 'customer:' .. d.customer, ref)
redis.call('HSET', tkey, 'last_activity', d.now, 'last_msg', d.msgkey)
add_message(ref, d.msgkey)
link_ids(ref, d.link_ids)

if d.action == 'support' then
  local owner = redis.call('HGET', tkey, 'owner')
  if redis.call('HGET', tkey, 'state') ~= 'support' then
    park(ref, 'support')
    -- Customer and CSM hear about the move once, not on every later message.
    followup.tell = true
  end
  followup.support = d.msgkey
  event(ref, new and 'new-support' or 'to-support', {msg = d.message_id, rule = d.rule,
    why = d.why, moved = followup.tell == true})
  return finish('decided', ref, owner ~= '' and owner or nil, {new_thread = new})
end

local state = redis.call('HGET', tkey, 'state')
if state == 'closed' then
  -- The customer wrote again: the thread reopens with its owner and a fresh clock.
  redis.call('HSET', tkey, 'state', 'open', 'first_response', '', 'opened', d.now)
  keep_thread(ref)
  event(ref, 'reopened', {msg = d.message_id})
end

local owner = v(d.target)
-- A CSM named by the rules takes no thread they do not hold already beyond their capacity
-- (the rules see the counts too; this settles a race between two routers).
if owner and redis.call('SISMEMBER', P .. 'open:' .. owner, ref) == 0
    and not has_room(owner) then
  local full = owner .. ' is full (' .. d.max_open .. ' open threads): next in the round-robin'
  d.why = d.why .. '; ' .. full
  followup.why = (followup.why or '') .. '; ' .. full
  owner = pick(account_of(ref))
end
if not owner and state ~= 'held' and not v(d.target) then
  local note
  owner, note = pick_for(ref)
  if note then
    d.why = d.why .. '; ' .. note
    followup.why = (followup.why or '') .. '; ' .. note
    if new then daily('language-to-pool:' .. d.language) end
  end
end
-- The languages new threads came in (report.py): pool-wide, as `language:<code>`.
if new and v(d.language) then daily('language:' .. d.language) end
if not owner then
  local held_new = hold(ref, d.msgkey, d.now)
  -- Nobody on shift is the schedule, not an overflow: it waits for the next shift.
  if held_new and not d.all_off_shift then followup.overflow = ref end
  event(ref, 'held', {msg = d.message_id, rule = d.rule, why = d.why, new = new or nil})
  return finish('held', ref, nil, {new_thread = new, held_new = held_new})
end

local previous = set_owner(ref, owner)
if v(d.cover_for) and owner == d.target then cover(ref, d.cover_for) end
if new or state == 'closed' or previous ~= owner then
  start_clock(ref, due_for(ref))
elseif (redis.call('HGET', tkey, 'due') or '') == '' then
  quiet_from(ref, d.now)  -- answered already: quiet from its newest mail
end
followup.deliver = {d.msgkey}
followup.owner = owner
event(ref, new and 'new' or 'routed', {msg = d.message_id, owner = owner,
  previous = previous or '', rule = d.rule, why = d.why})
return finish('decided', ref, owner, {new_thread = new})
