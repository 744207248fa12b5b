-- Everything a forward needs, read in one round trip: the message's record, whether this
-- forward went out already, the raw message, its thread, the forwards the owner got in it,
-- the account's other threads (a free-mail customer's account is the person alone: see
-- threads.account_of), and (for someone new to the thread) the messages so far.
-- ARGV: msgkey, owner, forward Message-ID, how many earlier messages, how many threads.
-- The one reader of a thread's history: the Support handoff asks with no owner (nobody's
-- forwards) and no threads (Store.thread_history).
-- Standalone (raw bytes cannot pass through cjson): answers a flat array.
local P = 'csm:'
local msgkey, owner, message_id = ARGV[1], ARGV[2], ARGV[3]
local history_n, earlier_n = tonumber(ARGV[4]), tonumber(ARGV[5])
local mkey = P .. 'msg:' .. msgkey
local record = redis.call('HGETALL', mkey)
local sent = redis.call('EXISTS', P .. 'sent:' .. message_id)
local ref = redis.call('HGET', mkey, 'ref')
if not ref or ref == '' then return {record, sent, '', {}, {}, {}, {}} end
local tkey = P .. 'thread:' .. ref
local raw = redis.call('GET', P .. 'raw:' .. msgkey) or ''
local thread = redis.call('HGETALL', tkey)
local previous = {}
if owner ~= '' then previous = redis.call('LRANGE', tkey .. ':forwards:' .. owner, -10, -1) end
local earlier = {}
local account = redis.call('HGET', tkey, 'account')
if earlier_n > 0 and account and account ~= '' then
  for _, other in ipairs(redis.call('ZREVRANGE', P .. 'account:' .. account, 0, earlier_n)) do
    if other ~= ref and #earlier < earlier_n then
      local t = redis.call('HMGET', P .. 'thread:' .. other, 'subject', 'owner', 'state')
      table.insert(earlier, {other, t[1] or '', t[2] or '', t[3] or ''})
    end
  end
end
local history = {}
if #previous == 0 then
  local msgs = redis.call('LRANGE', tkey .. ':msgs', 0, -1)
  local upto = #msgs
  for i, m in ipairs(msgs) do
    if m == msgkey then upto = i - 1; break end
  end
  for i = math.max(1, upto - history_n + 1), upto do
    local r = redis.call('GET', P .. 'raw:' .. msgs[i])
    if r then table.insert(history, r) end
  end
end
return {record, sent, raw, thread, previous, earlier, history}
