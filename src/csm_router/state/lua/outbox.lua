-- The outbox's own steps (see outbox.py): offer, take, sending, sent, later, retry, dead,
-- reclaim, revive, drop, note. An entry is due when its score in `csm:outbox` is in the
-- past; offering or taking it pushes the score out, so a lost offer comes due again by itself.
local OUTBOX, RUNNING, DEAD = P .. 'outbox', P .. 'outbox:running', P .. 'dead'
local function ekey(id) return P .. 'outbox:e:' .. id end
local function alive(holder) return redis.call('EXISTS', P .. 'alive:' .. holder) == 1 end

-- The note and the copy about a handoff follow it on its queue, in its job where they can.
local function queue_of(kind)
  if kind == 'support' or kind == 'support-note' or kind == 'support-copy' then
    return 'support'
  end
  return 'deliver'
end

-- Whether an entry can be offered now: not while its last job still waits in its queue.
-- RQ's job hash says so in O(1); a job a worker popped and then died with still reads
-- 'queued' but is in no queue: an empty queue proves it at once, and an offer older than
-- a few leases is looked for in the queue (a scan, so at most `d.scans` per call).
-- Each team's RQ queues and job ids begin with its name (outbox.rq_prefix).
local RQ = d.rq or ''
local scans = d.scans or 3
local function offerable(id)
  redis.call('ZADD', OUTBOX, d.now + d.lease, id)
  local e = redis.call('HMGET', ekey(id), 'kind', 'job', 'offered_at')
  if not e[1] then return nil end
  local queue = queue_of(e[1])
  if not e[2] then return queue end
  if redis.call('HGET', 'rq:job:' .. e[2], 'status') ~= 'queued' then return queue end
  local qkey = 'rq:queue:' .. RQ .. queue
  if redis.call('LLEN', qkey) == 0 then return queue end
  if scans > 0 and d.now - (tonumber(e[3]) or 0) > 3 * d.lease then
    scans = scans - 1
    if not redis.call('LPOS', qkey, e[2]) then return queue end
  end
  return nil
end

-- Mark entry `id` done (a tombstone for a week, so the same send is not owed again while
-- its reason is fresh). Repeating it changes nothing. An attempt is counted as it ends
-- (done, retry, dead): a wait (`later`) is none.
local function finish(id, result)
  local e = redis.call('HMGET', ekey(id), 'kind', 'state')
  if not e[1] then return end
  if e[2] == 'pending' then
    count('attempt', e[1])
    count('done', e[1])
  end
  redis.call('ZREM', OUTBOX, id)
  redis.call('HDEL', RUNNING, id)
  redis.call('HSET', ekey(id), 'state', 'done', 'done', d.now, 'result', result or '')
  redis.call('HDEL', ekey(id), 'sending', 'write_by')
  redis.call('EXPIRE', ekey(id), d.keep_done)
end

-- The attempt is over and nothing was sent (or the send failed for sure): the marker goes.
local function release(id)
  redis.call('HDEL', RUNNING, id)
  redis.call('HSET', ekey(id), 'holder', '')
  redis.call('HDEL', ekey(id), 'sending', 'write_by')
end

-- The attempt failed (to be retried, or for good): counted as it ends, like `finish`'s.
-- Answers the attempts made so far.
local function failed(id)
  release(id)
  local kind = redis.call('HGET', ekey(id), 'kind')
  count('attempt', kind)
  count('failure', kind)
  return redis.call('HINCRBY', ekey(id), 'attempts', 1)
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
        job = {queue = queue, job = RQ .. id .. '-' .. offers, ids = {}}
        open[queue] = job
        table.insert(out, job)
      end
      table.insert(job.ids, id)
      redis.call('HSET', ekey(id), 'job', job.job, 'offered_at', d.now)
    end
  end
  return cjson.encode(out)

elseif d.op == 'take' then
  local e = redis.call('HMGET', ekey(d.id), 'kind', 'args', 'attempts', 'state', 'sending',
    'write_by')
  if not e[1] or e[4] ~= 'pending' then return cjson.encode({state = 'gone'}) end
  local holder = redis.call('HGET', RUNNING, d.id)
  if holder and holder ~= d.holder and alive(holder) then
    return cjson.encode({state = 'busy', holder = holder})
  end
  -- Another incarnation began sending it: it may have been accepted and be recorded any
  -- moment. Not before that holder is dead and past the time it could still write, unless
  -- it is an earlier incarnation of this same stable name (names are unique among live
  -- workers, so that one is gone).
  local marker, write_by = e[5] or '', tonumber(e[6]) or 0
  local same = (d.same or '') ~= '' and string.sub(marker, 1, #d.same) == d.same
  -- Or a process on the caller's own host that the caller saw gone (`d.dead`).
  same = same or ((d.dead or '') ~= '' and marker == d.dead and not alive(marker))
  if marker ~= '' and marker ~= d.holder and not same
      and (alive(marker) or d.now < write_by) then
    local at = write_by > d.now and write_by or d.now + (d.lease or 10)
    redis.call('ZADD', OUTBOX, at, d.id)
    return cjson.encode({state = 'busy', holder = marker, ['until'] = at})
  end
  redis.call('HSET', RUNNING, d.id, d.holder)
  redis.call('HSET', ekey(d.id), 'holder', d.holder, 'started', d.now)
  -- Out of reach of offers while a live worker has it; `reclaim` frees it if that dies.
  redis.call('ZADD', OUTBOX, d.now + 86400, d.id)
  return cjson.encode({state = 'taken', kind = e[1], args = e[2], attempts = tonumber(e[3]),
    marker = marker})

elseif d.op == 'sending' then
  -- Written before the SMTP transaction (or the Support handler) starts: until `write_by`
  -- nobody else sends this entry, whatever becomes of this holder's heartbeat.
  if redis.call('HGET', ekey(d.id), 'state') ~= 'pending'
      or redis.call('HGET', RUNNING, d.id) ~= d.holder then
    return cjson.encode({state = 'lost'})
  end
  redis.call('HSET', ekey(d.id), 'sending', d.holder, 'write_by', d.write_by)
  return cjson.encode({state = 'sending'})

elseif d.op == 'sent' then
  -- Everything written after a send, once: guarded by the sent marker, so a repeat after a
  -- lost answer or a failover writes nothing twice (the RPUSHes, the counters).
  local skey = P .. 'sent:' .. d.message_id
  local fresh = redis.call('EXISTS', skey) == 0
  if fresh then
    redis.call('SET', skey, 1, 'EX', d.sent_ttl)
    for _, c in ipairs(d.writes or {}) do redis.call(unpack(c)) end
  end
  if (d.id or '') ~= '' then finish(d.id, d.result) end
  return cjson.encode({state = fresh and 'recorded' or 'already'})

elseif d.op == 'done' then
  finish(d.id, d.result)
  return cjson.encode({state = 'done'})

elseif d.op == 'later' then
  -- A wait (no replica confirmed yet, what it says has not happened yet): no attempt is
  -- counted. Only the entry's holder puts it back: another may have taken it meanwhile.
  if redis.call('HGET', ekey(d.id), 'state') ~= 'pending'
      or redis.call('HGET', RUNNING, d.id) ~= d.holder then
    return cjson.encode({state = 'gone'})
  end
  release(d.id)
  redis.call('ZADD', OUTBOX, d.now + d.delay, d.id)
  return cjson.encode({state = 'pending'})

elseif d.op == 'retry' then
  if redis.call('HGET', ekey(d.id), 'state') ~= 'pending' then
    return cjson.encode({state = 'gone'})
  end
  local n = failed(d.id)
  redis.call('HSET', ekey(d.id), 'error', d.error)
  redis.call('ZADD', OUTBOX, d.now + d.delay, d.id)
  return cjson.encode({state = 'pending', attempts = n})

elseif d.op == 'dead' then
  if redis.call('HGET', ekey(d.id), 'state') ~= 'pending' then
    return cjson.encode({state = 'gone'})
  end
  redis.call('ZREM', OUTBOX, d.id)
  failed(d.id)
  redis.call('HSET', ekey(d.id), 'state', 'dead', 'error', d.error, 'dead', d.now)
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

elseif d.op == 'note' then
  -- Automatic notes to one sender per day, at most `d.limit`: a forged From cannot turn
  -- the router into a source of backscatter. Counted per entry, so a retry counts once.
  local nkey = P .. 'notes:' .. d.day .. ':' .. d.to
  if redis.call('SISMEMBER', nkey, d.id) == 0 then
    if redis.call('SCARD', nkey) >= d.limit then return cjson.encode({state = 'limited'}) end
    redis.call('SADD', nkey, d.id)
    redis.call('EXPIRE', nkey, 2 * 86400)
  end
  return cjson.encode({state = 'allowed'})
end
return cjson.encode({error = 'unknown op ' .. tostring(d.op)})
