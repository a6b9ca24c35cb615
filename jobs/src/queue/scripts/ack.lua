-- Acks and deletes one entry, so the stream holds only pending and in-flight jobs.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] entry id
-- pcall: a group lost in a Redis restart must not stop the delete.
redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
