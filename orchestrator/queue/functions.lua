#!lua name=vlmq
-- The vlmq queue: every change of a job's state, as one atomic Redis Function.
--
-- docs/PROTOCOL.md is the reference; orchestrator/redis_keys.py names the same keys. Every
-- key of a deployment starts with its hash tag `{namespace}`; each function is given one key
-- (a queue's base hash, or a job's hash) and builds the others from that tag, so all of them
-- live in one Cluster slot. Only Redis 7.0 commands are used: 7.0 is the floor.
--
-- Never XDEL a stream entry the consumer group has not read: on Redis 7 that makes
-- XINFO GROUPS report `lag` as nil until the group reads past it, and autoscalers that read
-- lag would see an empty queue. A cancelled queued job keeps its entry; the claim that reads
-- it drops it. Every XDEL below is of an entry the group has read.

local LIBRARY_VERSION = '__VERSION__'
local GROUP = 'vlmq'
local NUM_LANES = 3
local FAIR_EVERY = 8          -- every 8th claimed slot is offered to the lower lanes first
local HISTORY_BYTES = 2048    -- the newest events of a job's history are kept
local DEAD_LETTERS_KEPT = 10000
local DEFAULT_MAX_BACKLOG = 100000
local DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024
local MAX_JOB_ID_BYTES = 256
local MAX_RESULT_TTL_MS = 30 * 24 * 3600 * 1000
local MAX_CLOSE_PER_CALL = 10000  -- jobs one vlmq_close_batch call cancels: Redis stays responsive

local function now_ms_us()
    local t = redis.call('TIME')
    local sec, usec = tonumber(t[1]), tonumber(t[2])
    return sec * 1000 + math.floor(usec / 1000), sec * 1000000 + usec
end

local function int(n)
    return string.format('%d', n)
end

local function tag_of(key)
    local tag = string.match(key, '^({[A-Za-z0-9_.-]+})')
    if not tag then
        error('vlmq: key ' .. key .. ' does not start with a {namespace} hash tag')
    end
    return tag
end

local function queue_key(tag, queue)
    return tag .. ':q:' .. queue
end

local function lane_key(qkey, lane)
    return qkey .. ':lane:' .. lane
end

local function job_key(tag, job_id)
    return tag .. ':job:' .. job_id
end

local function batch_key(tag, batch)
    return tag .. ':batch:' .. batch
end

local function deadlines_key(tag)
    return tag .. ':batch-deadlines'
end

local function fail(code, message)
    return redis.error_reply(code .. ' ' .. message)
end

-- The job's history with one event more, its oldest events dropped past HISTORY_BYTES.
local function with_event(history, now, event)
    history = (history or '') .. int(now) .. ' ' .. event .. '\n'
    if #history > HISTORY_BYTES then
        local cut = string.find(history, '\n', #history - HISTORY_BYTES, true)
        history = string.sub(history, (cut or 0) + 1)
    end
    return history
end

local function ensure_group(stream)
    -- Made at ID 0 (not $), so entries added before the group existed are read too.
    local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
    if not ok and not string.find(tostring(err), 'BUSYGROUP', 1, true) then
        error(err)
    end
end

-- Counter changes gathered over one call and written once at its end: a call that moves
-- 500 jobs writes each counter once, not 500 times.
local function new_tally(tag, qkey)
    return {tag = tag, qkey = qkey, queue = {}, batches = {}, events = {}, ttl = {},
        dropped = {}, leases = {}, unleased = {}, wake = false, deadline = {}}
end

local function count(tally, field, n)
    tally.queue[field] = (tally.queue[field] or 0) + n
end

-- Move a batch's count from one state to another; a final state also adds an event.
local function batch_moved(tally, batch, job_id, from, to, final, ttl_ms)
    if not batch or batch == '' then
        return
    end
    local counts = tally.batches[batch]
    if not counts then
        counts = {}
        tally.batches[batch] = counts
        tally.events[batch] = {}
    end
    if from then
        counts[from] = (counts[from] or 0) - 1
    end
    counts[to] = (counts[to] or 0) + 1
    if final then
        counts.open = (counts.open or 0) - 1
        local events = tally.events[batch]
        table.insert(events, job_id)
        table.insert(events, to)
        tally.ttl[batch] = ttl_ms
    end
end

-- Add n to a batch's own counter (its token usage).
local function batch_add(tally, batch, field, n)
    local counts = tally.batches[batch]
    if counts and n and n > 0 then
        counts[field] = (counts[field] or 0) + n
    end
end

-- When the batch's completion window ends, in ms; false when it has none. Cached per call.
local function batch_deadline(tally, batch)
    local known = tally.deadline[batch]
    if known == nil then
        known = tonumber(redis.call('HGET', batch_key(tally.tag, batch) .. ':info',
            'expires_ms') or '') or false
        tally.deadline[batch] = known
    end
    return known
end

-- One command over many arguments, a thousand at a time (Lua's unpack has a stack limit).
local function call_chunked(command, key, prefix, values)
    for i = 1, #values, 1000 do
        local last = math.min(#values, i + 999)
        if prefix then
            redis.call(command, key, prefix, unpack(values, i, last))
        else
            redis.call(command, key, unpack(values, i, last))
        end
    end
end

local function write_tally(tally)
    for stream, ids in pairs(tally.dropped) do
        call_chunked('XACK', stream, GROUP, ids)
        call_chunked('XDEL', stream, nil, ids)
    end
    call_chunked('ZADD', tally.qkey .. ':leases', nil, tally.leases)  -- score, member pairs
    call_chunked('ZREM', tally.qkey .. ':leases', nil, tally.unleased)
    if tally.wake then
        redis.call('LPUSH', tally.qkey .. ':wake', '1')
        redis.call('LTRIM', tally.qkey .. ':wake', 0, 0)
    end
    for field, n in pairs(tally.queue) do
        if n ~= 0 then
            redis.call('HINCRBY', tally.qkey, field, n)
        end
    end
    for batch, counts in pairs(tally.batches) do
        local bkey = batch_key(tally.tag, batch)
        local open = nil
        for field, n in pairs(counts) do
            if n ~= 0 or field == 'open' then
                local value = redis.call('HINCRBY', bkey, field, n)
                if field == 'open' then
                    open = value
                end
            end
        end
        local events = tally.events[batch]
        for i = 1, #events, 2 do
            redis.call('XADD', bkey .. ':events', '*', 'job', events[i], 'state', events[i + 1])
        end
        if open ~= nil and open <= 0 and tally.ttl[batch] then
            -- The batch is finished: it goes with its jobs' results, and its window no longer
            -- matters. (Its info and line errors expire on their own, after the window.)
            redis.call('HSET', bkey, 'finished_ms', int(now_ms_us()))
            redis.call('ZREM', deadlines_key(tally.tag), batch)
            for _, key in ipairs({bkey, bkey .. ':jobs', bkey .. ':events'}) do
                redis.call('PEXPIRE', key, tally.ttl[batch])
            end
        end
    end
end

-- Add a job's entry to its lane; the entry, as the job hash records it.
local function publish(tally, lane, job_id)
    local id = redis.call('XADD', lane_key(tally.qkey, lane), '*', 'job', job_id)
    tally.wake = true
    return lane .. '|' .. id
end

-- Drop an entry the group has read (acknowledged and deleted when the call ends).
local function drop_entry(tally, entry)
    if not entry or entry == '' then
        return
    end
    local bar = string.find(entry, '|', 1, true)
    if not bar then
        return
    end
    local stream = lane_key(tally.qkey, string.sub(entry, 1, bar - 1))
    local ids = tally.dropped[stream]
    if not ids then
        ids = {}
        tally.dropped[stream] = ids
    end
    table.insert(ids, string.sub(entry, bar + 1))
end

local JOB_FIELDS = {'state', 'queue', 'priority', 'entry', 'fence', 'deliveries',
    'max_deliveries', 'result_ttl_ms', 'batch', 'cancel', 'owner', 'created_ms', 'history'}
-- What a field holds before the first write to it (a queued job has no fence yet).
local JOB_DEFAULTS = {fence = '0', deliveries = '0', max_deliveries = '3', cancel = '0',
    owner = '', batch = '', entry = '', priority = '1', created_ms = '0'}

local function read_job(jkey, with_payload)
    local values
    if with_payload then
        values = redis.call('HMGET', jkey, 'payload', unpack(JOB_FIELDS))
    else
        values = redis.call('HMGET', jkey, unpack(JOB_FIELDS))
    end
    local job = {}
    local first = 0
    if with_payload then
        job.payload = values[1]
        first = 1
    end
    if not values[first + 1] then
        return nil
    end
    for i, name in ipairs(JOB_FIELDS) do
        job[name] = values[first + i] or JOB_DEFAULTS[name]
    end
    job.ttl = tonumber(job.result_ttl_ms) or 86400000
    return job
end

-- A job reaches a final state: it leaves the stream, the leases and the backlog, and its
-- hash expires with its result.
local function finalize(tally, jkey, job_id, job, state, now, event, result)
    drop_entry(tally, job.entry)
    if job.state == 'running' then
        table.insert(tally.unleased, job_id)
    else
        redis.call('ZREM', tally.qkey .. ':delayed', job_id)
    end
    local fields = {'state', state, 'finished_ms', int(now)}
    if event then
        table.insert(fields, 'history')
        table.insert(fields, with_event(job.history, now, event))
    end
    if result and result ~= '' then
        table.insert(fields, 'result')
        table.insert(fields, result)
    end
    redis.call('HSET', jkey, unpack(fields))
    redis.call('PEXPIRE', jkey, job.ttl)
    count(tally, 'open', -1)
    count(tally, state, 1)
    batch_moved(tally, job.batch, job_id, job.state, state, true, job.ttl)
    if state == 'cancelled' and job.batch ~= ''
            and redis.call('HGET', jkey, 'cancel_reason') == 'batch_expired' then
        batch_add(tally, job.batch, 'expired', 1)
    end
    if state == 'succeeded' and job.batch ~= '' and result and result ~= '' then
        -- The batch's token usage, from the result's own counts (a msgpack map).
        local ok, decoded = pcall(cmsgpack.unpack, result)
        if ok and type(decoded) == 'table' then
            batch_add(tally, job.batch, 'prompt_tokens', tonumber(decoded['prompt_tokens']))
            batch_add(tally, job.batch, 'completion_tokens',
                tonumber(decoded['completion_tokens']))
        end
    end
end

local function dead_letter(tally, jkey, job_id, job, now, reason, result)
    redis.call('XADD', tally.qkey .. ':dead', 'MAXLEN', '~', DEAD_LETTERS_KEPT, '*',
        'job', job_id, 'reason', reason)
    finalize(tally, jkey, job_id, job, 'dead', now, 'dead: ' .. reason, result)
end

-- Back to its lane at once, with a new entry (requeue after a lost lease, or a release).
local function requeue(tally, jkey, job_id, job, now, event, deliveries)
    drop_entry(tally, job.entry)
    table.insert(tally.unleased, job_id)
    redis.call('HSET', jkey, 'state', 'queued', 'entry', publish(tally, job.priority, job_id),
        'owner', '', 'deliveries', int(deliveries), 'history', with_event(job.history, now, event))
    batch_moved(tally, job.batch, job_id, 'running', 'queued', false, job.ttl)
end

local function option(args, first, last, name, default)
    for i = first, last, 2 do
        if args[i] == name then
            return args[i + 1]
        end
    end
    return default
end

local function positive_int(value, name)
    local n = tonumber(value)
    if not n or n ~= math.floor(n) or n < 1 then
        error('vlmq: ' .. name .. ' must be a positive integer, got ' .. tostring(value))
    end
    return n
end

-- vlmq_version: the library's version, for the servers and clients that load it.
local function version()
    return LIBRARY_VERSION
end

-- What every submission of one call shares: the queue, its limits, the options.
local function submission(qkey, args, first, last)
    local tag = tag_of(qkey)
    local queue = string.match(qkey, '^{[A-Za-z0-9_.-]+}:q:([A-Za-z0-9_.-]+)$')
    if not queue then
        return nil, fail('INVALID', 'KEYS[1] must be a queue key {namespace}:q:<queue>, got ' .. qkey)
    end
    local batch = option(args, first, last, 'batch', '')
    if #batch > MAX_JOB_ID_BYTES or string.find(batch, '[%c%s]') then
        return nil, fail('INVALID', 'batch must be at most 256 bytes without spaces or control characters')
    end
    local ok, ttl = pcall(positive_int, option(args, first, last, 'result_ttl_ms', '86400000'),
        'result_ttl_ms')
    if not ok or ttl > MAX_RESULT_TTL_MS then
        return nil, fail('INVALID', 'result_ttl_ms must be an integer in [1, 30 days in ms]')
    end
    local ok2, max_deliveries = pcall(positive_int,
        option(args, first, last, 'max_deliveries', '3'), 'max_deliveries')
    if not ok2 or max_deliveries > 1000 then
        return nil, fail('INVALID', 'max_deliveries must be an integer in [1, 1000]')
    end
    if batch ~= '' then
        local closed = redis.call('HGET', batch_key(tag, batch) .. ':info', 'closed')
        if closed and closed ~= '' then
            return nil, fail('BATCH_CLOSED', 'batch ' .. batch .. ' is ' .. closed
                .. ': it takes no more jobs')
        end
    end
    local progress = option(args, first, last, 'progress', nil)
    if progress and (batch == '' or not tonumber(progress)) then
        return nil, fail('INVALID', 'progress needs a batch and an integer')
    end
    local settings = redis.call('HMGET', qkey, 'max_backlog', 'max_payload_bytes', 'open')
    return {
        progress = progress, refused = 0,
        tag = tag, queue = queue, batch = batch, ttl = int(ttl),
        max_deliveries = int(max_deliveries),
        max_backlog = tonumber(settings[1]) or DEFAULT_MAX_BACKLOG,
        max_payload = tonumber(settings[2]) or DEFAULT_MAX_PAYLOAD,
        open = tonumber(settings[3]) or 0,
        created_ms = int(now_ms_us()),
        streams = {},
        tally = new_tally(tag, qkey),
        accepted = 0,
    }
end

-- One submission; returns {'created' | 'exists', job_id, state}, or an error reply.
local function submit_one(ctx, job_id, priority, payload)
    if #job_id == 0 or #job_id > MAX_JOB_ID_BYTES or string.find(job_id, '[%c%s]') then
        return fail('INVALID', 'job_id must be 1 to 256 bytes without spaces or control characters')
    end
    if priority ~= '0' and priority ~= '1' and priority ~= '2' then
        return fail('INVALID', 'priority must be 0 (high), 1 (normal) or 2 (low), got ' .. priority)
    end
    local jkey = job_key(ctx.tag, job_id)
    local existing = redis.call('HGET', jkey, 'state')
    if existing then
        return {'exists', job_id, existing}
    end
    if #payload > ctx.max_payload then
        return fail('TOO_LARGE', 'payload is ' .. #payload .. ' bytes, over max_payload_bytes '
            .. ctx.max_payload)
    end
    if ctx.open >= ctx.max_backlog then
        return fail('QUEUE_FULL', 'queue ' .. ctx.queue .. ' holds ' .. ctx.open
            .. ' unfinished jobs (max_backlog ' .. ctx.max_backlog .. '); submit again later')
    end
    local tally = ctx.tally
    local stream = lane_key(tally.qkey, priority)
    if not ctx.streams[stream] then
        ctx.streams[stream] = true
        if redis.call('EXISTS', stream) == 0 then
            ensure_group(stream)
            redis.call('SADD', ctx.tag .. ':queues', ctx.queue)
        end
    end
    local entry = publish(tally, priority, job_id)
    redis.call('HSET', jkey, 'queue', ctx.queue, 'state', 'queued', 'priority', priority,
        'payload', payload, 'batch', ctx.batch, 'created_ms', ctx.created_ms,
        'max_deliveries', ctx.max_deliveries, 'result_ttl_ms', ctx.ttl, 'entry', entry)
    ctx.open = ctx.open + 1
    ctx.accepted = ctx.accepted + 1
    count(tally, 'open', 1)
    count(tally, 'submitted', 1)
    if ctx.batch ~= '' then
        ctx.batch_jobs = ctx.batch_jobs or {}
        table.insert(ctx.batch_jobs, job_id)
    end
    return {'created', job_id, 'queued'}
end

local function end_submission(ctx)
    if ctx.batch ~= '' and ctx.batch_jobs then
        local bkey = batch_key(ctx.tag, ctx.batch)
        local n = #ctx.batch_jobs
        redis.call('HINCRBY', bkey, 'total', n)
        redis.call('HINCRBY', bkey, 'queued', n)
        call_chunked('RPUSH', bkey .. ':jobs', nil, ctx.batch_jobs)
        if redis.call('HINCRBY', bkey, 'open', n) == n then
            -- Open again after it had finished (and been given a TTL): it stays while open,
            -- and its window counts again.
            for _, key in ipairs({bkey, bkey .. ':jobs', bkey .. ':events'}) do
                redis.call('PERSIST', key)
            end
            local expires = redis.call('HGET', bkey .. ':info', 'expires_ms')
            if expires then
                redis.call('ZADD', deadlines_key(ctx.tag), expires, ctx.batch)
            end
        end
    end
    if ctx.progress and ctx.refused == 0 then
        -- Every line before `progress` is in (or was a line error): a resumed submitter
        -- starts there. Written in the same call as the jobs, so the two never disagree.
        redis.call('HSET', batch_key(ctx.tag, ctx.batch) .. ':info', 'next_line', ctx.progress)
    end
    write_tally(ctx.tally)
end

-- vlmq_submit KEYS[1]=queue base; ARGV = job_id priority [name value ...] payload.
-- Options: batch <id>, result_ttl_ms <ms>, max_deliveries <n>.
-- Returns {'created' | 'exists', job_id, state}.
local function submit(keys, args)
    local nargs = #args
    if nargs < 3 or nargs % 2 == 0 then
        return fail('INVALID', 'expected job_id priority [name value ...] payload')
    end
    local ctx, refusal = submission(keys[1], args, 3, nargs - 2)
    if not ctx then
        return refusal
    end
    local reply = submit_one(ctx, args[1], args[2], args[nargs])
    end_submission(ctx)
    return reply
end

-- vlmq_submit_many KEYS[1]=queue base; ARGV = n [name value ...] then n' triples of
-- job_id priority payload, where n is the number of option arguments. Returns the replies
-- of vlmq_submit in order, a refusal as {'refused', job_id, message}; the submissions after
-- a refusal are still tried (one too large does not stop the rest).
local function submit_many(keys, args)
    local num_options = tonumber(args[1])
    if not num_options or num_options % 2 ~= 0 or (#args - 1 - num_options) % 3 ~= 0 then
        return fail('INVALID', 'expected n [name value ...] (job_id priority payload)...')
    end
    local ctx, refusal = submission(keys[1], args, 2, num_options)
    if not ctx then
        return refusal
    end
    local replies = {}
    for i = 2 + num_options, #args - 2, 3 do
        local reply = submit_one(ctx, args[i], args[i + 1], args[i + 2])
        if reply['err'] then
            reply = {'refused', args[i], reply['err']}
            ctx.refused = ctx.refused + 1
        end
        table.insert(replies, reply)
    end
    end_submission(ctx)
    return replies
end

-- Start one job read from a lane; returns the claim's fields, or nil when it was dropped.
local function start(tally, lane, id, job_id, consumer, lease_ms, now, now_us)
    local entry = lane .. '|' .. id
    local jkey = job_id and job_key(tally.tag, job_id)
    local job = jkey and read_job(jkey, true)
    if not job or job.entry ~= entry or job.state ~= 'queued' then
        -- A cancelled job, a requeued job's old entry, or an entry without a job (written
        -- by hand, or whose job expired): the group has read it now, so it can go.
        drop_entry(tally, entry)
        count(tally, 'dropped_entries', 1)
        return nil
    end
    local deadline = job.batch ~= '' and batch_deadline(tally, job.batch)
    if deadline and now >= deadline then
        -- Its batch's completion window ended before any server started it.
        redis.call('HSET', jkey, 'cancel_reason', 'batch_expired')
        job.entry = entry
        finalize(tally, jkey, job_id, job, 'cancelled', now, 'cancelled: batch_expired', nil)
        return nil
    end
    local deliveries = tonumber(job.deliveries) + 1
    if deliveries > tonumber(job.max_deliveries) then
        job.entry = entry
        dead_letter(tally, jkey, job_id, job, now,
            'claimed ' .. (deliveries - 1) .. ' times without a result (max_deliveries '
            .. job.max_deliveries .. ')', nil)
        return nil
    end
    -- A fencing token that grows with every claim, and stays above any token issued before
    -- a restore of an older snapshot: the clock has moved on since.
    local fence = int(math.max(tonumber(job.fence) + 1, now_us))
    redis.call('HSET', jkey, 'state', 'running', 'owner', consumer, 'fence', fence,
        'deliveries', int(deliveries), 'started_ms', int(now))
    table.insert(tally.leases, now + lease_ms)
    table.insert(tally.leases, job_id)
    count(tally, 'claimed', 1)
    batch_moved(tally, job.batch, job_id, 'queued', 'running', false, job.ttl)
    return {job_id, fence, int(deliveries), job.created_ms, job.payload}
end

local function read_lane(qkey, lane, consumer, count_wanted)
    local stream = lane_key(qkey, lane)
    if redis.call('EXISTS', stream) == 0 then
        return {}
    end
    local ok, reply = pcall(redis.call, 'XREADGROUP', 'GROUP', GROUP, consumer,
        'COUNT', count_wanted, 'STREAMS', stream, '>')
    if not ok then
        if not string.find(tostring(reply), 'NOGROUP', 1, true) then
            error(reply)
        end
        ensure_group(stream)
        reply = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', count_wanted,
            'STREAMS', stream, '>')
    end
    if not reply then
        return {}
    end
    return reply[1][2]
end

-- vlmq_claim KEYS[1]=queue base; ARGV = consumer max_jobs lease_ms.
-- Returns {more, job_id, fence, deliveries, created_ms, payload, ...}: `more` is 1 when
-- max_jobs entries were read (there may be more waiting).
local function claim(keys, args)
    local qkey = keys[1]
    local tally = new_tally(tag_of(qkey), qkey)
    local consumer = args[1]
    local wanted = positive_int(args[2], 'max_jobs')
    local lease_ms = positive_int(args[3], 'lease_ms')
    local now, now_us = now_ms_us()
    redis.call('ZADD', qkey .. ':servers', now, consumer)
    -- Slots [turn, turn + wanted): each FAIR_EVERY-th goes to a lower lane first, the lanes
    -- taking turns, so a busy high lane slows the others but never stops them.
    local turn = tonumber(redis.call('HGET', qkey, 'turn') or '0')
    local fair = {}
    for slot = turn, turn + wanted - 1 do
        if slot % FAIR_EVERY == FAIR_EVERY - 1 then
            local lane = 1 + (math.floor(slot / FAIR_EVERY) % (NUM_LANES - 1))
            fair[lane] = (fair[lane] or 0) + 1
        end
    end
    local claimed = {0}
    local read = 0
    local function take(lane, count_wanted)
        local entries = read_lane(qkey, lane, consumer, count_wanted)
        for _, entry in ipairs(entries) do
            read = read + 1
            local fields = entry[2]
            local job_id = nil
            for i = 1, #fields, 2 do
                if fields[i] == 'job' then
                    job_id = fields[i + 1]
                end
            end
            local started = start(tally, lane, entry[1], job_id, consumer, lease_ms, now, now_us)
            if started then
                for _, value in ipairs(started) do
                    table.insert(claimed, value)
                end
            end
        end
    end
    for lane = NUM_LANES - 1, 1, -1 do
        if fair[lane] then
            take(lane, fair[lane])
        end
    end
    for lane = 0, NUM_LANES - 1 do
        if read >= wanted then
            break
        end
        take(lane, wanted - read)
    end
    redis.call('HSET', qkey, 'turn', int(turn + read))
    if read >= wanted then
        -- There may be more: wake another idle server for them.
        claimed[1] = 1
        tally.wake = true
    end
    write_tally(tally)
    return claimed
end

-- vlmq_renew KEYS[1]=queue base; ARGV = consumer lease_ms job_id fence [job_id fence ...].
-- Returns one word per job: 'ok', 'cancel' (renewed, but its user asked to cancel it) or
-- 'lost' (it is no longer this claim's: give it up and never report it).
local function renew(keys, args)
    local qkey = keys[1]
    local tag = tag_of(qkey)
    local consumer = args[1]
    local lease_ms = positive_int(args[2], 'lease_ms')
    local now = now_ms_us()
    redis.call('ZADD', qkey .. ':servers', now, consumer)
    local answers = {}
    for i = 3, #args - 1, 2 do
        local job_id, fence = args[i], args[i + 1]
        local values = redis.call('HMGET', job_key(tag, job_id), 'state', 'fence', 'cancel')
        if values[1] ~= 'running' or values[2] ~= fence then
            table.insert(answers, 'lost')
        else
            redis.call('ZADD', qkey .. ':leases', 'XX', now + lease_ms, job_id)
            table.insert(answers, values[3] == '1' and 'cancel' or 'ok')
        end
    end
    return answers
end

-- vlmq_finish KEYS[1]=queue base; ARGV = groups of five: job_id fence action delay_ms result.
-- Actions: 'succeeded', 'failed', 'cancelled' (final, with the result), 'retry' (a failure
-- that is not the job's fault: due again after delay_ms, or dead past max_deliveries) and
-- 'release' (handed back undone, at once, not counted as a delivery).
-- Returns one word per job: the state it is in now, or 'stale' when the fence did not match.
local function finish(keys, args)
    local qkey = keys[1]
    local tally = new_tally(tag_of(qkey), qkey)
    local now = now_ms_us()
    local answers = {}
    for i = 1, #args - 4, 5 do
        local job_id, fence, action, delay, result =
            args[i], args[i + 1], args[i + 2], args[i + 3], args[i + 4]
        local jkey = job_key(tally.tag, job_id)
        local job = read_job(jkey)
        if not job or job.state ~= 'running' or job.fence ~= fence then
            -- A claim that is no longer the job's (its lease expired and another took it, or
            -- it was finished): at most one result per job.
            count(tally, 'stale_refused', 1)
            table.insert(answers, 'stale')
        elseif action == 'succeeded' or action == 'failed' or action == 'cancelled' then
            finalize(tally, jkey, job_id, job, action, now, nil, result)
            table.insert(answers, action)
        elseif job.cancel == '1' and (action == 'retry' or action == 'release') then
            -- Its user asked to cancel it: it ends here instead of running again.
            finalize(tally, jkey, job_id, job, 'cancelled', now, 'cancelled', result)
            table.insert(answers, 'cancelled')
        elseif action == 'retry' then
            if tonumber(job.deliveries) >= tonumber(job.max_deliveries) then
                dead_letter(tally, jkey, job_id, job, now,
                    'failed on each of ' .. job.deliveries .. ' deliveries', result)
                table.insert(answers, 'dead')
            else
                drop_entry(tally, job.entry)
                table.insert(tally.unleased, job_id)
                redis.call('ZADD', qkey .. ':delayed', now + (tonumber(delay) or 0), job_id)
                redis.call('HSET', jkey, 'state', 'queued', 'entry', '', 'owner', '',
                    'last_error', result, 'history',
                    with_event(job.history, now, 'retry in ' .. delay .. ' ms'))
                count(tally, 'retried', 1)
                batch_moved(tally, job.batch, job_id, 'running', 'queued', false, job.ttl)
                table.insert(answers, 'queued')
            end
        elseif action == 'release' then
            requeue(tally, jkey, job_id, job, now, 'released by ' .. job.owner,
                math.max(0, tonumber(job.deliveries) - 1))
            count(tally, 'released', 1)
            table.insert(answers, 'queued')
        else
            return fail('INVALID', 'unknown action ' .. tostring(action))
        end
    end
    write_tally(tally)
    return answers
end

-- vlmq_reap KEYS[1]=queue base; ARGV = max_jobs.
-- Requeues running jobs whose lease ended (their server is presumed dead; the delivery
-- stays counted) and publishes retries that are due. Returns {requeued, promoted}.
local function reap(keys, args)
    local qkey = keys[1]
    local tally = new_tally(tag_of(qkey), qkey)
    local limit = positive_int(args[1], 'max_jobs')
    local now = now_ms_us()
    local requeued, promoted = 0, 0
    for _, job_id in ipairs(redis.call('ZRANGEBYSCORE', qkey .. ':leases', '-inf', now,
            'LIMIT', 0, limit)) do
        local jkey = job_key(tally.tag, job_id)
        local job = read_job(jkey)
        if job and job.state == 'running' and job.cancel == '1' then
            finalize(tally, jkey, job_id, job, 'cancelled', now,
                'lease of ' .. job.owner .. ' expired after a cancel was asked; cancelled', nil)
        elseif job and job.state == 'running' then
            requeue(tally, jkey, job_id, job, now,
                'lease of ' .. job.owner .. ' expired; requeued', tonumber(job.deliveries))
            requeued = requeued + 1
        else
            table.insert(tally.unleased, job_id)
        end
    end
    count(tally, 'requeued', requeued)
    for _, job_id in ipairs(redis.call('ZRANGEBYSCORE', qkey .. ':delayed', '-inf', now,
            'LIMIT', 0, limit)) do
        redis.call('ZREM', qkey .. ':delayed', job_id)
        local jkey = job_key(tally.tag, job_id)
        local job = read_job(jkey)
        if job and job.state == 'queued' and job.entry == '' then
            redis.call('HSET', jkey, 'entry', publish(tally, job.priority, job_id))
            promoted = promoted + 1
        end
    end
    -- Servers not heard from for an hour are forgotten.
    redis.call('ZREMRANGEBYSCORE', qkey .. ':servers', '-inf', now - 3600000)
    write_tally(tally)
    return {requeued, promoted}
end

local function check_reason(reason)
    if not string.match(reason, '^[a-z_]+$') or #reason > 32 then
        return fail('INVALID', 'a cancel reason is 1 to 32 of [a-z_], got ' .. reason)
    end
    return nil
end

-- Cancel one job (see vlmq_cancel); returns the state it is in now.
local function cancel_job(tag, jkey, job_id, job, reason)
    local now = now_ms_us()
    local why = reason == 'cancelled' and '' or ' (' .. reason .. ')'
    if job.state == 'queued' then
        -- The entry is not dropped here: the group may not have read it (see the top). The
        -- claim that reads it finds the job's entry changed, and drops it.
        local tally = new_tally(tag, queue_key(tag, job.queue))
        local entry = job.entry
        job.entry = ''
        redis.call('HSET', jkey, 'cancel_reason', reason)
        finalize(tally, jkey, job_id, job, 'cancelled', now, 'cancelled while queued' .. why, nil)
        redis.call('HSET', jkey, 'entry', 'cancelled|' .. entry)
        write_tally(tally)
        return 'cancelled'
    elseif job.state == 'running' then
        if job.cancel ~= '1' then
            redis.call('HSET', jkey, 'cancel', '1', 'cancel_reason', reason,
                'history', with_event(job.history, now, 'cancel asked' .. why))
            redis.call('PUBLISH', tag .. ':cancel', job_id)
        end
        return 'running'
    end
    return job.state
end

-- vlmq_cancel KEYS[1]=job hash; ARGV = [reason]. Returns {state}: 'cancelled' for a queued
-- job (its stream entry stays until a claim reads it), 'running' for a running one (its
-- server is told, and it ends 'cancelled' unless it finished first), or the final state it
-- already had. The reason (default 'cancelled'; batches use 'batch_cancelled' and
-- 'batch_expired') is kept in the job hash's `cancel_reason`.
local function cancel(keys, args)
    local jkey = keys[1]
    local tag = tag_of(jkey)
    local job_id = string.sub(jkey, #tag + 6)
    local reason = args[1] or 'cancelled'
    local refusal = check_reason(reason)
    if refusal then
        return refusal
    end
    local job = read_job(jkey)
    if not job then
        return fail('NO_SUCH_JOB', 'no job ' .. job_id .. ' (never submitted, or its result expired)')
    end
    return {cancel_job(tag, jkey, job_id, job, reason)}
end

-- vlmq_open_batch KEYS[1]=batch base; ARGV = expires_ms keep_ms [name value ...].
-- Records a batch's info once (a second call changes nothing: a resumed submitter keeps the
-- first window); expires_ms 0 means no completion window. The info lives until keep_ms after
-- the window (or after now, without one). Returns {created (0|1), name, value, ...}.
local function open_batch(keys, args)
    local bkey = keys[1]
    local tag = tag_of(bkey)
    local batch = string.sub(bkey, #tag + 8)
    local expires = tonumber(args[1])
    local ok, keep = pcall(positive_int, args[2], 'keep_ms')
    if not expires or expires < 0 or expires ~= math.floor(expires) or not ok
            or #args % 2 ~= 0 then
        return fail('INVALID', 'expected expires_ms keep_ms [name value ...]')
    end
    local info = bkey .. ':info'
    local created = 0
    if redis.call('EXISTS', info) == 0 then
        local now = now_ms_us()
        local fields = {'created_ms', int(now), 'expires_ms', int(expires)}
        for i = 3, #args, 2 do
            table.insert(fields, args[i])
            table.insert(fields, args[i + 1])
        end
        redis.call('HSET', info, unpack(fields))
        if expires > 0 then
            redis.call('ZADD', deadlines_key(tag), expires, batch)
            redis.call('PEXPIREAT', info, expires + keep)
        else
            redis.call('HDEL', info, 'expires_ms')
            redis.call('PEXPIRE', info, keep)
        end
        created = 1
    end
    local reply = {created}
    for _, value in ipairs(redis.call('HGETALL', info)) do
        table.insert(reply, value)
    end
    return reply
end

-- vlmq_close_batch KEYS[1]=batch base; ARGV = reason ('cancelled' | 'expired') max_jobs.
-- Closes the batch to new jobs (the first reason stays) and cancels up to max_jobs of its
-- unfinished jobs with reason 'batch_<reason>', resuming where the last call stopped; call
-- again until `done` is 1. Finished jobs keep their results. Returns {done, closed reason,
-- queued jobs cancelled, running jobs told to stop}.
local function close_batch(keys, args)
    local bkey = keys[1]
    local tag = tag_of(bkey)
    local batch = string.sub(bkey, #tag + 8)
    local reason = args[1]
    if reason ~= 'cancelled' and reason ~= 'expired' then
        return fail('INVALID', "reason must be 'cancelled' or 'expired', got " .. tostring(reason))
    end
    local ok, limit = pcall(positive_int, args[2], 'max_jobs')
    if not ok then
        return fail('INVALID', 'max_jobs must be a positive integer')
    end
    limit = math.min(limit, MAX_CLOSE_PER_CALL)
    local info = bkey .. ':info'
    local closed = redis.call('HGET', info, 'closed')
    if (not closed or closed == '') and reason == 'expired' then
        -- Judged by Redis's clock, not the caller's: a server whose clock runs ahead must
        -- not end a batch early.
        local expires = tonumber(redis.call('HGET', info, 'expires_ms') or '')
        if not expires or now_ms_us() < expires then
            return fail('NOT_DUE', 'batch ' .. batch .. ' has no completion window that ended')
        end
    end
    if not closed or closed == '' then
        closed = reason
        redis.call('HSET', info, 'closed', reason, 'closed_ms', int(now_ms_us()))
        if redis.call('PTTL', info) == -1 then
            -- A batch opened without vlmq_open_batch: its info lives as long as its jobs.
            redis.call('PEXPIRE', info, MAX_RESULT_TTL_MS)
        end
    end
    local cursor = tonumber(redis.call('HGET', info, 'close_cursor') or '0')
    local ids = redis.call('LRANGE', bkey .. ':jobs', cursor, cursor + limit - 1)
    local cancelled, told = 0, 0
    for _, job_id in ipairs(ids) do
        local jkey = job_key(tag, job_id)
        local job = read_job(jkey)
        if job then
            local state = cancel_job(tag, jkey, job_id, job, 'batch_' .. closed)
            if state == 'cancelled' and job.state == 'queued' then
                cancelled = cancelled + 1
            elseif state == 'running' then
                told = told + 1
            end
        end
    end
    cursor = cursor + #ids
    redis.call('HSET', info, 'close_cursor', cursor)
    local done = 0
    if cursor >= redis.call('LLEN', bkey .. ':jobs') then
        done = 1
        redis.call('ZREM', deadlines_key(tag), batch)
    end
    return {done, closed, cancelled, told}
end

redis.register_function{function_name = 'vlmq_version', callback = version,
    flags = {'no-writes'}}
redis.register_function('vlmq_submit', submit)
redis.register_function('vlmq_submit_many', submit_many)
redis.register_function('vlmq_claim', claim)
redis.register_function('vlmq_renew', renew)
redis.register_function('vlmq_finish', finish)
redis.register_function('vlmq_reap', reap)
redis.register_function('vlmq_cancel', cancel)
redis.register_function('vlmq_open_batch', open_batch)
redis.register_function('vlmq_close_batch', close_batch)
