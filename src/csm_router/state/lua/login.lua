-- An OAuth login refused, or granted again (see logins.py). The first refusal of an episode
-- owes the lead one notice (its id is the episode's start); later ones only bring the line
-- up to date. A grant ends the episode, so the next refusal is told again.
local LOGIN = P .. 'login:refused'
if d.op == 'refused' then
  local since = redis.call('HGET', LOGIN, 'since')
  if not since then
    since = tostring(d.now)
    redis.call('HSET', LOGIN, 'since', since)
    owe('login-refused', {line = d.line, since = d.now, by = d.by}, since)
  end
  redis.call('HSET', LOGIN, 'line', d.line, 'by', d.by, 'last', d.now)
  return with_owed({since = tonumber(since)})
elseif d.op == 'granted' then
  return with_owed({ended = redis.call('DEL', LOGIN)})
end
return redis.error_reply('login.lua: unknown op ' .. tostring(d.op))
