-- Start thread references, or go on above `d.floor` after Redis lost its data, and write
-- the marker (csm:epoch) every process watches. One script, so the router that finds
-- Redis emptied is the only one to number again and to tell the lead (once: the entry is
-- keyed by the new marker). The sequence only ever rises.
local seq_key, epoch_key = P .. 'seq', P .. 'epoch'
local had_seq = redis.call('EXISTS', seq_key) == 1
local start = math.max(tonumber(d.first) - 1, tonumber(d.floor))
if tonumber(redis.call('GET', seq_key) or '0') < start then
  redis.call('SET', seq_key, start)
end
redis.call('SET', P .. 'started', d.wall, 'NX')
local epoch = redis.call('GET', epoch_key)
local next_ref = tonumber(redis.call('GET', seq_key)) + 1
if epoch then return with_owed({epoch = epoch, lost = false, next = next_ref}) end
epoch = d.epoch
redis.call('SET', epoch_key, epoch)
-- Lost: this router saw the marker go, or its mailbox holds routed mail Redis knows
-- nothing of. A first start, or an upgrade from before the marker, is neither.
local lost = d.lost or (not had_seq and tonumber(d.floor) > 0)
if lost then
  redis.call('HSET', P .. 'lost', 'at', d.now, 'next', next_ref, 'by', d.by)
  if d.has_lead then
    owe('data-loss', {next_ref = next_ref, at = d.now, by = d.by, epoch = epoch}, epoch)
  end
end
return with_owed({epoch = epoch, lost = lost, next = next_ref})
