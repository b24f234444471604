-- mark.lua: record that successors were published (after the broker took the messages),
-- so a redelivered predecessor never publishes them again. Writes nothing once the run's
-- keys are gone, so no key is re-created without an expiry.
--
-- KEYS[1] run node state (hash)
-- ARGV[1 ..] ids of the nodes that were published
--
-- Returns the number of nodes marked.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
for i = 1, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i] .. ':dispatch', 'published')
end
return #ARGV
