-- `csm-router back`: the CSM is no longer away, and gets back the threads their backup
-- covered, in one script (a router reading between the two would route a reply to the
-- backup of someone already back).
redis.call('HDEL', P .. 'away', d.csm)
return cjson.encode({returned = return_covered(d.csm)})
