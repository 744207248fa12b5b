-- The outbox's own steps (see outbox.py): offer, take, done, retry, dead, reclaim, revive.
-- An entry is due when its score in `csm:outbox` is in the past; offering or taking it
-- pushes the score out, so a lost offer comes due again by itself.
local OUTBOX, RUNNING, DEAD = P .. 'outbox', P .. 'outbox:running', P .. 'dead'
local function ekey(id) return P .. 'outbox:e:' .. id end

local function queue_of(kind)
  if kind == 'support' then return 'support' end
  return 'deliver'
end

-- Whether an entry can be offered now: not while its last job still waits in its queue.
-- A job a worker popped and then died with is in no queue: offered again.
local function offerable(id)
  redis.call('ZADD', OUTBOX, d.now + d.lease, id)
  local e = redis.call('HMGET', ekey(id), 'kind', 'job')
  if not e[1] then return nil end
  local queue = queue_of(e[1])
  if e[2] and redis.call('LPOS', 'rq:queue:' .. queue, e[2]) then return nil end
  return queue
end

-- Offer due entries (of d.ids, or any) in jobs of up to d.batch entries per queue: the
-- caller enqueues each job. Every entry remembers the job that carries it.
if d.op == 'offer' then
  local ids = d.ids
  if ids == nil or ids == cjson.null then
    ids = redis.call('ZRANGEBYSCORE', OUTBOX, '-inf', d.now, 'LIMIT', 0, d.limit)
  end
  local open, out = {}, {}
  for _, id in ipairs(ids) do
    local at = redis.call('ZSCORE', OUTBOX, id)
    local queue = at and tonumber(at) <= d.now and offerable(id)
    if queue then
      local job = open[queue]
      if not job or #job.ids >= d.batch then
        -- A fresh job id per offer: RQ keeps a lost job's hash and would refuse the id.
        local offers = redis.call('HINCRBY', ekey(id), 'offers', 1)
        job = {queue = queue, job = id .. '-' .. offers, ids = {}}
        open[queue] = job
        table.insert(out, job)
      end
      table.insert(job.ids, id)
      redis.call('HSET', ekey(id), 'job', job.job)
    end
  end
  return cjson.encode(out)

elseif d.op == 'take' then
  local e = redis.call('HMGET', ekey(d.id), 'kind', 'args', 'attempts', 'state')
  if not e[1] or e[4] ~= 'pending' then return cjson.encode({state = 'gone'}) end
  local holder = redis.call('HGET', RUNNING, d.id)
  if holder and holder ~= d.holder and redis.call('EXISTS', P .. 'alive:' .. holder) == 1 then
    return cjson.encode({state = 'busy', holder = holder})
  end
  redis.call('HSET', RUNNING, d.id, d.holder)
  redis.call('HSET', ekey(d.id), 'holder', d.holder, 'started', d.now)
  count('attempt', e[1])
  -- Out of reach of offers while a live worker has it; `reclaim` frees it if that dies.
  redis.call('ZADD', OUTBOX, d.now + 86400, d.id)
  return cjson.encode({state = 'taken', kind = e[1], args = e[2], attempts = tonumber(e[3])})

elseif d.op == 'done' then
  local kind = redis.call('HGET', ekey(d.id), 'kind')
  if kind and redis.call('HGET', ekey(d.id), 'state') == 'pending' then count('done', kind) end
  redis.call('ZREM', OUTBOX, d.id)
  redis.call('HDEL', RUNNING, d.id)
  -- A tombstone, so the same send is not owed again while its reason is fresh.
  redis.call('HSET', ekey(d.id), 'state', 'done', 'done', d.now, 'result', d.result or '')
  redis.call('EXPIRE', ekey(d.id), d.keep_done)
  return cjson.encode({state = 'done'})

elseif d.op == 'retry' then
  if redis.call('HGET', ekey(d.id), 'state') ~= 'pending' then
    return cjson.encode({state = 'gone'})
  end
  redis.call('HDEL', RUNNING, d.id)
  count('failure', redis.call('HGET', ekey(d.id), 'kind'))
  local n = redis.call('HINCRBY', ekey(d.id), 'attempts', 1)
  redis.call('HSET', ekey(d.id), 'error', d.error, 'holder', '')
  redis.call('ZADD', OUTBOX, d.now + d.delay, d.id)
  return cjson.encode({state = 'pending', attempts = n})

elseif d.op == 'dead' then
  if redis.call('HGET', ekey(d.id), 'state') ~= 'pending' then
    return cjson.encode({state = 'gone'})
  end
  redis.call('ZREM', OUTBOX, d.id)
  redis.call('HDEL', RUNNING, d.id)
  count('failure', redis.call('HGET', ekey(d.id), 'kind'))
  redis.call('HINCRBY', ekey(d.id), 'attempts', 1)
  redis.call('HSET', ekey(d.id), 'state', 'dead', 'error', d.error, 'holder', '', 'dead', d.now)
  redis.call('EXPIRE', ekey(d.id), d.keep_dead)
  redis.call('ZADD', DEAD, d.now, d.id)
  redis.call('ZREMRANGEBYSCORE', DEAD, '-inf', d.now - d.keep_dead)
  return cjson.encode({state = 'dead'})

elseif d.op == 'reclaim' then
  -- Entries whose worker died (its heartbeat key expired) are due again now.
  local out = {}
  local running = redis.call('HGETALL', RUNNING)
  for i = 1, #running, 2 do
    local id, holder = running[i], running[i + 1]
    local named_dead = d.dead_prefix ~= '' and holder ~= d.keep
      and string.sub(holder, 1, #d.dead_prefix) == d.dead_prefix
    if named_dead or redis.call('EXISTS', P .. 'alive:' .. holder) == 0 then
      redis.call('HDEL', RUNNING, id)
      if redis.call('HGET', ekey(id), 'state') == 'pending' then
        redis.call('ZADD', OUTBOX, d.now, id)
        table.insert(out, {id, holder})
      end
    end
  end
  return cjson.encode(out)

elseif d.op == 'revive' then
  local state = redis.call('HGET', ekey(d.id), 'state')
  if state ~= 'dead' then return cjson.encode({state = state or 'gone'}) end
  redis.call('ZREM', DEAD, d.id)
  redis.call('PERSIST', ekey(d.id))
  redis.call('HSET', ekey(d.id), 'state', 'pending', 'attempts', 0, 'error', '')
  redis.call('ZADD', OUTBOX, d.now, d.id)
  return cjson.encode({state = 'pending'})

elseif d.op == 'drop' then
  local state = redis.call('HGET', ekey(d.id), 'state')
  if state ~= 'dead' then return cjson.encode({state = state or 'gone'}) end
  redis.call('ZREM', DEAD, d.id)
  redis.call('DEL', ekey(d.id))
  return cjson.encode({state = 'dropped'})
end
return cjson.encode({error = 'unknown op ' .. tostring(d.op)})
