-- Owe this week's digest to the lead, once however many sweeps ask (the id is the week's);
-- none for a week that ended before this deployment first ran: it has nothing to tell.
local started = tonumber(redis.call('GET', P .. 'started') or '')
if not started or started >= d.until_ts then return with_owed({skipped = true}) end
owe('digest', {week = d.week, since = d.since, ['until'] = d['until']}, d.week)
return with_owed({})
