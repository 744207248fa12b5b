-- Shared helpers, prepended to each script. Keys live under `csm:`; enums are lowercase.
-- The scripts touch keys they compute (a CSM's open set, a thread), so they need a single
-- Redis server (or Sentinel), not Cluster.
local P = 'csm:'
local d = cjson.decode(ARGV[1])

local function v(x)
  if x == cjson.null then return nil end
  return x
end

local function is_away(addr)
  for _, a in ipairs(d.env_away or {}) do
    if a == addr then return true end
  end
  local till = redis.call('HGET', P .. 'away', addr)
  if not till then return false end
  if till == '' then return true end
  return tonumber(till) > d.now
end

local function has_room(addr)
  return d.max_open == 0 or redis.call('SCARD', P .. 'open:' .. addr) < d.max_open
end

-- Smooth weighted round-robin as nginx does it: every eligible CSM gains its weight,
-- the largest current value wins and pays back the total. Ties go to pool order.
local function pick()
  local best, best_cw, total = nil, nil, 0
  local cws = {}
  for _, m in ipairs(d.pool) do
    local addr, w = m[1], m[2]
    if addr ~= d.exclude and not is_away(addr) and has_room(addr) then
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

local function event(ref, kind, fields)
  fields.at = d.now
  fields.event = kind
  redis.call('RPUSH', P .. 'thread:' .. ref .. ':events', cjson.encode(fields))
end

-- Make `owner` the thread's owner: open-thread sets and the day's assignment count follow.
local function set_owner(ref, owner)
  local tkey = P .. 'thread:' .. ref
  local old = redis.call('HGET', tkey, 'owner')
  if old and old ~= '' and old ~= owner then
    redis.call('SREM', P .. 'open:' .. old, ref)
  end
  redis.call('SADD', P .. 'open:' .. owner, ref)
  redis.call('HSET', tkey, 'owner', owner, 'state', 'open')
  redis.call('ZREM', P .. 'held', ref)
  if old ~= owner then
    redis.call('HINCRBY', P .. 'stats:assigned:' .. d.day, owner, 1)
  end
  return old
end

-- Messages of a held thread, now decided for `owner`; the caller enqueues their delivery.
local function release_messages(ref, owner)
  local hkey = P .. 'thread:' .. ref .. ':held'
  local msgs = redis.call('LRANGE', hkey, 0, -1)
  redis.call('DEL', hkey)
  for _, m in ipairs(msgs) do
    redis.call('HSET', P .. 'msg:' .. m, 'state', 'decided', 'owner', owner)
  end
  return msgs
end

-- How long a message's record and its Message-ID link are kept: long past any reply.
local KEEP_SECONDS = 400 * 86400

local function link_ids(ref, ids)
  for _, id in ipairs(ids or {}) do
    redis.call('SET', P .. 'msgid:' .. id, ref, 'EX', KEEP_SECONDS)
  end
end

-- The first-response clock: `csm:due` holds every thread waiting for its first answer.
local function start_clock(ref, at)
  redis.call('HSET', P .. 'thread:' .. ref, 'due', at, 'reminded', '', 'escalated', '')
  redis.call('ZADD', P .. 'due', at, ref)
end

local function stop_clock(ref)
  redis.call('HSET', P .. 'thread:' .. ref, 'due', '')
  redis.call('ZREM', P .. 'due', ref)
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
end
