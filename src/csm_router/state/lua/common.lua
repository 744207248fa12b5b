-- Shared helpers, prepended to each script. Keys live under `csm:`; enums are lowercase.
-- The scripts touch keys they compute (a CSM's open set, a thread), so they need a single
-- Redis server (or Sentinel), not Cluster.
local P = 'csm:'
local d = cjson.decode(ARGV[1])

local function v(x)
  if x == cjson.null then return nil end
  return x
end

local function set_of(list)
  local found = {}
  for _, x in ipairs(list or {}) do found[x] = true end
  return found
end
-- Off shift (ROUTER_HOURS) counts as away: no new threads. Premium accounts' threads go
-- to the premium pool first, with a shorter first-response target.
local OFF_SHIFT, PREMIUM, PREMIUM_POOL = set_of(d.off_shift), set_of(d.premium),
  set_of(d.premium_pool)

-- Marked away (ROUTER_AWAY, or `csm-router away` with no end or an end still ahead).
local function away_marked(addr)
  for _, a in ipairs(d.env_away or {}) do
    if a == addr then return true end
  end
  local till = redis.call('HGET', P .. 'away', addr)
  if not till then return false end
  if till == '' then return true end
  return tonumber(till) > d.now
end

local function is_away(addr)
  return OFF_SHIFT[addr] or away_marked(addr)
end

local function has_room(addr)
  return d.max_open == 0 or redis.call('SCARD', P .. 'open:' .. addr) < d.max_open
end

-- Smooth weighted round-robin as nginx does it: every eligible CSM gains its weight,
-- the largest current value wins and pays back the total. Ties go to pool order.
local function pick_among(only)
  local best, best_cw, total = nil, nil, 0
  local cws = {}
  for _, m in ipairs(d.pool) do
    local addr, w = m[1], m[2]
    if (not only or only[addr]) and addr ~= d.exclude and not is_away(addr)
        and has_room(addr) then
      local cw = tonumber(redis.call('HGET', P .. 'rr', addr) or '0') + w
      cws[addr] = cw
      total = total + w
      if best == nil or cw > best_cw then
        best, best_cw = addr, cw
      end
    end
  end
  if best == nil then return nil end
  for addr, cw in pairs(cws) do
    if addr == best then cw = cw - total end
    redis.call('HSET', P .. 'rr', addr, cw)
  end
  return best
end

local function account_of(ref)
  return redis.call('HGET', P .. 'thread:' .. ref, 'account') or ''
end

-- The next CSM for a thread of `account` among `only` (a set; nil: the whole pool): the
-- premium pool's first for premium accounts.
local function pick(account, only)
  if account and PREMIUM[account] and next(PREMIUM_POOL) then
    local premium = PREMIUM_POOL
    if only then
      premium = {}
      for addr in pairs(only) do
        if PREMIUM_POOL[addr] then premium[addr] = true end
      end
    end
    local found = next(premium) and pick_among(premium)
    if found then return found end
  end
  return pick_among(only)
end

-- The next CSM for thread `ref`: among those who read its language (ROUTER_LANGUAGES; the
-- premium pool's readers first), else the whole pool, with the note that says why.
local function pick_for(ref)
  local lang = redis.call('HGET', P .. 'thread:' .. ref, 'language')
  local readers = lang and d.readers and d.readers[lang]
  local account = account_of(ref)
  if not readers or #readers == 0 then return pick(account) end
  local found = pick(account, set_of(readers))
  if found then return found end
  local owner = pick(account)
  if not owner then return nil end
  local name = (d.language_names or {})[lang] or lang
  return owner, 'nobody who reads ' .. name .. ' can take it now: to the whole pool'
end

-- When a first-response clock started now ends (in working time) for thread `ref`.
local function due_for(ref)
  if PREMIUM[account_of(ref)] and v(d.premium_due_at) then return d.premium_due_at end
  return d.due_at
end

-- Every key has an end. A thread's history keeps its newest entries; a closed thread is
-- kept `retention` seconds after it closed; indexes drop what is older than that.
local MAX_EVENTS, MAX_MSGS = 500, 1000

-- Counters for /metrics (metrics.py reads them): a field is the family and its label
-- values, tab-separated. Counted by the script that decides, so once per message.
local function count(...)
  redis.call('HINCRBY', P .. 'metrics', table.concat({...}, '\t'), 1)
end

-- What the lead's figures are made of (report.py, poolstatus.py and metrics.py read them): per
-- day of the lead's (`d.day`, in Settings.report_zone), counts in `csm:daily:<day>`: fields
-- `what\tcsm` per CSM and `what` alone for the pool's (threads that came in and where they
-- went), first responses per CSM, and which CSMs touched which customer. Small whatever
-- the mail volume; kept `retention` seconds.
local MOVES = {reassigned = true, escalated = true, undeliverable = true}

local function daily(what, csm)
  local day = P .. 'daily:' .. d.day
  if csm == nil then
    redis.call('HINCRBY', day, what, 1)
  elseif csm ~= '' then
    redis.call('HINCRBY', day, what .. '\t' .. csm, 1)
  end
  redis.call('EXPIRE', day, d.retention)
end

-- A thread became `owner`'s, who did not hold it: routed new, released from held,
-- reassigned, escalated to them, taken over by replying, back from Support to someone new.
-- Counted here alone, so `status` (today) and `report` (a period) read one figure.
local function took(owner, old)
  if owner and owner ~= '' and owner ~= (old or '') then daily('taken', owner) end
end

local function tally(ref, kind, fields)
  -- Who touched the customer: named by the thread's customer, whose account report.py
  -- derives (threads.account_of), so a thread recorded before free-mail customers were
  -- people still counts its own person, not gmail.com.
  local t = redis.call('HMGET', P .. 'thread:' .. ref, 'customer', 'owner', 'account')
  local customer, holder = t[1] or '', t[2] or ''
  if customer == '' then customer = t[3] or '' end
  local owner, previous = fields.owner or '', fields.previous or ''
  local day = P .. 'daily:' .. d.day
  if MOVES[kind] and owner ~= previous then
    daily('moved-in', owner)
    daily('moved-out', previous)
  end
  if kind == 'escalated' then
    -- Went overdue in the period: not the same as overdue now (poolstatus.status).
    daily('overdue', previous)
    daily('went-overdue')
    if owner == '' then daily('went-overdue:held') end
  end
  -- Every thread that came in: to a CSM at once, held, or straight to Support.
  if kind == 'new' or kind == 'new-support' or (kind == 'held' and fields.new) then
    daily('came-in')
  end
  if kind == 'held' and fields.new then daily('came-in:held') end
  if kind == 'reply' then
    daily('replies', owner)
    if fields.first_response then
      redis.call('RPUSH', day .. ':first-response:' .. owner,
        fields.answered or fields.first_response)
      redis.call('EXPIRE', day .. ':first-response:' .. owner, d.retention)
    end
  end
  -- A customer's later message in a thread already with Support moves nothing.
  if (kind == 'to-support' or kind == 'new-support') and fields.moved ~= false then
    daily('to-support', holder)
    daily('to-support')
    if kind == 'new-support' then daily('came-in:support') end
  end
  if customer ~= '' then
    for _, csm in ipairs({owner, holder}) do
      if csm ~= '' then redis.call('HSET', day .. ':touched', customer .. '\t' .. csm, 1) end
    end
    redis.call('EXPIRE', day .. ':touched', d.retention)
  end
  redis.call('EXPIRE', day, d.retention)
end

local function event(ref, kind, fields)
  fields.at = d.now
  fields.event = kind
  local ekey = P .. 'thread:' .. ref .. ':events'
  redis.call('RPUSH', ekey, cjson.encode(fields))
  redis.call('LTRIM', ekey, -MAX_EVENTS, -1)
  tally(ref, kind, fields)
end

local function thread_keys(ref)
  local t = P .. 'thread:' .. ref
  return {t, t .. ':events', t .. ':msgs', t .. ':held'}
end

local function expire_thread(ref)
  for _, k in ipairs(thread_keys(ref)) do redis.call('EXPIRE', k, d.retention) end
end

local function keep_thread(ref)
  for _, k in ipairs(thread_keys(ref)) do redis.call('PERSIST', k) end
end

-- `csm:quiet` holds every open, answered thread, scored by its last mail: the sweep closes
-- those quiet for ROUTER_CLOSE_AFTER. A thread awaiting an answer (its clock runs), held,
-- closed or with Support is not in it: it never closes by itself.
local function quiet_from(ref, at)
  redis.call('ZADD', P .. 'quiet', at, ref)
end

local function not_quiet(ref)
  redis.call('ZREM', P .. 'quiet', ref)
end

-- Add `ref` to an index scored by time, dropping entries older than the retention.
local function index(zkey, ref)
  redis.call('ZADD', zkey, d.now, ref)
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', d.now - d.retention)
  redis.call('EXPIRE', zkey, d.retention)
end

-- A raw message is kept for its forward and for the history a CSM new to the thread gets
-- (the message forwarded and the five before it): older ones already delivered, or a CSM's
-- own, are dropped here. Whatever is left ends with RAW_TTL (store.RAW_TTL_SECONDS).
local RAW_KEPT, RAW_TTL = 6, math.min(14 * 86400, d.retention)
local RAW_DONE = {delivered = true, done = true, ignored = true}

local function add_message(ref, msgkey)
  local mkey = P .. 'thread:' .. ref .. ':msgs'
  redis.call('RPUSH', mkey, msgkey)
  redis.call('LTRIM', mkey, -MAX_MSGS, -1)
  -- A few past the window: one still owed when it left the window goes once delivered.
  for _, old in ipairs(redis.call('LRANGE', mkey, -(RAW_KEPT + 4), -(RAW_KEPT + 1))) do
    if RAW_DONE[redis.call('HGET', P .. 'msg:' .. old, 'state') or ''] then
      redis.call('DEL', P .. 'raw:' .. old)
    end
  end
end

-- Account affinity (ROUTER_AFFINITY_DAYS): `csm:served:<account>` says when each CSM last
-- took or answered a thread of the account; forgotten once older than the window.
local function served(ref, csm)
  local window = d.affinity_seconds or 0
  if window <= 0 or not csm or csm == '' then return end
  local account = account_of(ref)
  if account == '' then return end
  local skey = P .. 'served:' .. account
  redis.call('HSET', skey, csm, d.now)
  redis.call('EXPIRE', skey, window + 86400)
end

-- Make `owner` the thread's owner: open-thread sets and the day's `taken` follow.
local function set_owner(ref, owner)
  local tkey = P .. 'thread:' .. ref
  local old = redis.call('HGET', tkey, 'owner')
  if old and old ~= '' and old ~= owner then
    redis.call('SREM', P .. 'open:' .. old, ref)
  end
  redis.call('SADD', P .. 'open:' .. owner, ref)
  redis.call('HSET', tkey, 'owner', owner, 'state', 'open')
  served(ref, owner)
  keep_thread(ref)
  redis.call('ZREM', P .. 'held', ref)
  took(owner, old)
  return old
end

-- Nobody can take the thread: it waits in `csm:held` (oldest score first) with `msgkey`
-- owed to whoever takes it. Answers whether it was newly held.
local function hold(ref, msgkey, since)
  local tkey = P .. 'thread:' .. ref
  local held_new = redis.call('ZSCORE', P .. 'held', ref) == false
  local old = redis.call('HGET', tkey, 'owner')
  if old and old ~= '' then
    redis.call('SREM', P .. 'open:' .. old, ref)
  end
  redis.call('HSET', tkey, 'state', 'held', 'owner', '')
  if held_new then redis.call('ZADD', P .. 'held', since, ref) end
  if msgkey and msgkey ~= '' then
    redis.call('RPUSH', tkey .. ':held', msgkey)
    -- Owed to whoever frees up, however long that takes: kept until it is released.
    redis.call('PERSIST', P .. 'raw:' .. msgkey)
  end
  keep_thread(ref)
  not_quiet(ref)
  return held_new
end

-- Messages of a held thread, now decided for `owner`; the caller enqueues their delivery.
local function release_messages(ref, owner)
  local hkey = P .. 'thread:' .. ref .. ':held'
  local msgs = redis.call('LRANGE', hkey, 0, -1)
  redis.call('DEL', hkey)
  for _, m in ipairs(msgs) do
    redis.call('HSET', P .. 'msg:' .. m, 'state', 'decided', 'owner', owner)
    redis.call('EXPIRE', P .. 'raw:' .. m, RAW_TTL)
  end
  return msgs
end

-- How long a message's record and its Message-ID link are kept: long past any reply
-- (400 days, or the retention if shorter).
local KEEP_SECONDS = math.min(400 * 86400, d.retention)

-- Inbound mail links its Message-ID only where no link exists: a message that merely
-- claims an id already linked (a forward's, a customer's) re-points nothing. The product's
-- own ids are never offered here (store.record); its sends link them (jobs.deliver).
local function link_ids(ref, ids)
  for _, id in ipairs(ids or {}) do
    redis.call('SET', P .. 'msgid:' .. id, ref, 'EX', KEEP_SECONDS, 'NX')
  end
end

-- The first-response clock: `csm:due` holds every thread waiting for its first answer.
local function start_clock(ref, at)
  redis.call('HSET', P .. 'thread:' .. ref, 'due', at, 'reminded', '', 'escalated', '')
  redis.call('ZADD', P .. 'due', at, ref)
  not_quiet(ref)
end

-- `csm:late` holds every thread whose first answer is overdue and still unanswered, scored
-- by the due time it missed: escalated to a colleague with a fresh clock, or held with
-- nobody to take it, it is still late for its customer and stays in the lead's "overdue
-- now" until someone answers, it closes or Support takes it (stop_clock).
local function mark_late(ref, due)
  redis.call('ZADD', P .. 'late', 'NX', due, ref)
end

local function stop_clock(ref)
  redis.call('HSET', P .. 'thread:' .. ref, 'due', '')
  redis.call('ZREM', P .. 'due', ref)
  redis.call('ZREM', P .. 'late', ref)
end

-- The thread leaves its owner's open set (closed, or with Support); the owner is kept.
local function park(ref, state)
  local tkey = P .. 'thread:' .. ref
  local owner = redis.call('HGET', tkey, 'owner')
  if owner and owner ~= '' then
    redis.call('SREM', P .. 'open:' .. owner, ref)
  end
  redis.call('HSET', tkey, 'state', state)
  redis.call('ZREM', P .. 'held', ref)
  stop_clock(ref)
  not_quiet(ref)
  if state == 'closed' then expire_thread(ref) else keep_thread(ref) end
end

-- A backup covers an away CSM (`csm:backup`: CSM -> backup): replies in the CSM's threads
-- go to the backup, and `csm:covered:<csm>` lists the threads the backup took. Once the
-- CSM is back, each comes back to them; answers the references.
local function return_covered(addr)
  local back = {}
  for _, ref in ipairs(redis.call('SMEMBERS', P .. 'covered:' .. addr)) do
    local tkey = P .. 'thread:' .. ref
    if redis.call('HGET', tkey, 'covering_for') == addr then
      redis.call('HDEL', tkey, 'covering_for')
      local t = redis.call('HMGET', tkey, 'owner', 'state')
      local holder, state = t[1] or '', t[2] or ''
      -- Held threads go out as any held thread does; Support keeps what it has.
      if holder ~= '' and holder ~= addr and (state == 'open' or state == 'closed') then
        if state == 'open' then
          redis.call('SREM', P .. 'open:' .. holder, ref)
          redis.call('SADD', P .. 'open:' .. addr, ref)
        end
        redis.call('HSET', tkey, 'owner', addr)
        event(ref, 'returned', {owner = addr, previous = holder,
          why = addr .. ' is back from being away'})
        table.insert(back, tonumber(ref))
      end
    end
  end
  redis.call('DEL', P .. 'covered:' .. addr)
  redis.call('HDEL', P .. 'backup', addr)
  return back
end

-- The backup takes thread `ref` while its owner `addr` is away.
local function cover(ref, addr)
  redis.call('HSET', P .. 'thread:' .. ref, 'covering_for', addr)
  redis.call('SADD', P .. 'covered:' .. addr, ref)
end
