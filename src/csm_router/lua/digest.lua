-- Owe this week's digest to the lead, once however many sweeps ask (the id is the week's).
owe('digest', {week = d.week, since = d.since, ['until'] = d['until']}, d.week)
return with_owed({})
