/* agents/runtime.c -- one sandboxed Lua 5.4 agent (see runtime.h, docs/agents.md).
 *
 * Memory: Lua's small blocks come from pages shared by all agents, without
 * malloc's header (rt__small_alloc).
 * Limits: a quota allocator refuses memory over the cap (the event then
 * reports AGENT_OOM and the supervisor stops the agent); a count hook stops a
 * handler over its instruction budget, and keeps raising until the event
 * ends, so a script's pcall cannot swallow it; the pattern functions count
 * their matcher's steps against the same budget (agents/lpattern.c), and so
 * do the bytes an event allocates (what C builds in one instruction).
 * Sandbox: base (without dofile, loadfile, collectgarbage; load forced to
 * text; no __gc), string (without dump; rep bounded; find, match, gmatch and
 * gsub counted), table (its C loops bounded), math, utf8, coroutine, and
 * os.time/clock/date.  No io, package, require or debug.
 * Every Lua call that can fail runs protected: an unprotected error (say, the
 * memory cap hit while decoding a message) would abort the whole server. */
#define _GNU_SOURCE
#include "runtime.h"

#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "lpattern.h"

/* Under AddressSanitizer the small blocks (below) are poisoned but for the
 * bytes Lua asked for.  The pages they come from are not scanned for leaks
 * (as a root region they would keep every agent's blocks reachable, a leaked
 * agent too), so at exit every agent must have been freed, or what only its
 * small blocks point to shows as leaked. */
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#define RT_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define RT_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define RT_POISON(p, n) ((void)(p), (void)(n))
#define RT_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define RT_HOOK_EVERY 1000
#define RT_BYTES_PER_STEP 16    /* bytes allocated that count as one instruction */
#define RT_MAX_TIMERS 10000
#define RT_MAX_REP (1 << 20)
#define RT_MAX_LOG 4096
#define RT_MAX_HEADERS 32
#define RT_GC_PAUSE 125         /* % (agent_rt_new) */

struct rt_timer {
	int64_t due;
	int64_t every;          /* ms, 0 for a one-shot */
	int ref;                /* the function, in the registry */
	int id;
};

/* Laid out without padding: one per agent. */
struct agent_rt {
	lua_State *L;
	agent_host host;
	agent_limits lim;
	size_t used;
	size_t reserved;        /* what the libraries not opened yet would take */
	uint64_t count;         /* instructions (and pattern steps) in the current event */
	int64_t cpu_start_us;   /* the thread's CPU clock when the event began */
	void *refused_ptr;
	size_t refused_nsize;
	struct rt_timer *timers;
	agent_http_res *res;    /* the response being built, during http */
	int ref_handlers, ref_connect, ref_disconnect, ref_http;
	int ntimers, timers_cap, next_timer_id;
	unsigned libs_done;     /* rt__lazy_names opened or assigned (bit i) */
	unsigned char oom;
	unsigned char over_budget;
	unsigned char over_in_pattern;  /* the budget ran out in string.find/match/gmatch/gsub */
	unsigned char over_cpu;         /* the event ran out of CPU time (lim.cpu_ms) */
	unsigned char in_event;
	unsigned char string_open;      /* the string library is (rt__string_open) */
	unsigned char refused;          /* the last request was over the cap: Lua may retry it */
	unsigned char res_sent;
};

static agent_rt *rt__self(lua_State *L)
{
	return *(agent_rt **)lua_getextraspace(L);
}

/* --- small blocks ---------------------------------------------------------------- */

/* Most of an agent's blocks are small: short strings of 25 to 40 bytes (the
 * names of everything), tables of 56, closures, upvalues.  malloc adds 8
 * bytes to each and rounds up to 16, at least 32: about 16 bytes a block,
 * 2.4 KB of a small agent's 12.9 KB.  Lua says a block's size when it frees
 * or resizes it, so blocks of up to RT_SMALL_MAX bytes need no header: they
 * come from 4 KB pages of one size class each (8-byte steps), and a freed
 * block goes back to its page, found by rounding its address down.  The
 * pages are the process's, shared by all agents, so what one agent frees
 * serves the next; a page whose blocks are all free goes to a pool (but the
 * last of its class), for any class to take, and its memory goes back to
 * the system if it stays there (rt__pool_moved).  Larger blocks come from
 * malloc.  Threads: any (agents run on several workers, and move between
 * them): a lock per size class, and one for the pool, always taken in that
 * order. */
#define RT_SMALL_MAX 128
#define RT_GRAIN 8
#define RT_NCLASS (RT_SMALL_MAX / RT_GRAIN)
#define RT_PAGE 4096
#define RT_SEGMENT (256 * RT_PAGE)      /* mapped at once; a page costs memory once used */

struct rt_page {
	struct rt_page *prev, *next;    /* in its class's list of pages with a free block */
	void *free;                     /* its free blocks, linked through their first word */
	unsigned short used;            /* blocks handed out */
	unsigned short carved;          /* blocks cut so far: the rest of the page is untouched */
	unsigned short cap;             /* blocks it holds */
};
#define RT_PAGE_HEAD ((sizeof(struct rt_page) + RT_GRAIN - 1) / RT_GRAIN * RT_GRAIN)

static struct rt_class {
	pthread_mutex_t lock;
	struct rt_page *avail;          /* its pages with a free block; the first is used first */
} rt__class[RT_NCLASS] = { [0 ... RT_NCLASS - 1] = { PTHREAD_MUTEX_INITIALIZER, NULL } };

/* The empty pages are a stack, used from the top.  Those a whole window of
 * RT_POOL_WINDOW page moves did not reach, less RT_PAGES_WARM, are given back
 * to the system (madvise): giving back costs a system call, a TLB flush and
 * a page fault at the next use, and garbage collections empty and refill
 * pages all the time, so only what stayed unused is.  What is given back is
 * always the bottom of the stack. */
#define RT_POOL_WINDOW 1024
#define RT_PAGES_WARM 64

static struct rt_pool {
	pthread_mutex_t lock;
	char *seg_next, *seg_end;       /* what the last segment has not handed out yet */
	struct rt_page **empty;         /* empty pages, the latest last */
	size_t nempty, cap;
	size_t cold;                    /* empty[0..cold) have been given back */
	size_t low;                     /* the least nempty in this window */
	unsigned moves;                 /* page moves in this window */
	size_t pages;                   /* taken from segments, ever */
	long sys_page;                  /* the system's page size (0: not known yet) */
} rt__pool = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* A page moved in or out of the pool (under its lock): at the end of a
 * window, what stayed below its low mark goes back to the system. */
static void rt__pool_moved(struct rt_pool *o)
{
	if (o->nempty < o->low)
		o->low = o->nempty;
	if (o->cold > o->nempty)
		o->cold = o->nempty;
	if (++o->moves < RT_POOL_WINDOW)
		return;
	if (!o->sys_page)
		o->sys_page = sysconf(_SC_PAGESIZE);
	/* Only when the system's pages are ours: with bigger ones, madvise
	 * would take the neighbours' blocks too. */
	while (o->sys_page == RT_PAGE && o->cold + RT_PAGES_WARM < o->low &&
	       madvise(o->empty[o->cold], RT_PAGE, MADV_DONTNEED) == 0)
		o->cold++;
	o->moves = 0;
	o->low = o->nempty;
}

/* A page for a class (its header to be filled in), or NULL. */
static struct rt_page *rt__page_get(void)
{
	struct rt_pool *o = &rt__pool;
	struct rt_page *pg = NULL;
	pthread_mutex_lock(&o->lock);
	if (o->nempty) {
		pg = o->empty[--o->nempty];
		rt__pool_moved(o);
	} else {
		if (o->seg_next == o->seg_end) {
			char *seg = mmap(NULL, RT_SEGMENT, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (seg != MAP_FAILED) {
				/* A huge page would make one used page cost 2 MB. */
				madvise(seg, RT_SEGMENT, MADV_NOHUGEPAGE);
				RT_POISON(seg, RT_SEGMENT);
				o->seg_next = seg;
				o->seg_end = seg + RT_SEGMENT;
			}
		}
		if (o->seg_next != o->seg_end) {
			pg = (struct rt_page *)o->seg_next;
			o->seg_next += RT_PAGE;
			o->pages++;
		}
	}
	pthread_mutex_unlock(&o->lock);
	return pg;
}

/* An empty page back to the pool. */
static void rt__page_put(struct rt_page *pg)
{
	struct rt_pool *o = &rt__pool;
	pthread_mutex_lock(&o->lock);
	RT_POISON(pg, RT_PAGE);
	if (o->nempty == o->cap) {
		size_t cap = o->cap ? o->cap * 2 : 64;
		struct rt_page **grown = realloc(o->empty, cap * sizeof *grown);
		if (grown) {
			o->empty = grown;
			o->cap = cap;
		}
	}
	if (o->nempty < o->cap) {
		o->empty[o->nempty++] = pg;
		rt__pool_moved(o);
	} else if (munmap(pg, RT_PAGE) == 0) {
		o->pages--; /* no room to list it (out of memory): the page goes */
	}
	pthread_mutex_unlock(&o->lock);
}

static void *rt__small_alloc(size_t size)
{
	unsigned c = (unsigned)((size - 1) / RT_GRAIN);
	size_t bsize = (size_t)(c + 1) * RT_GRAIN;
	struct rt_class *k = &rt__class[c];
	void *b;

	pthread_mutex_lock(&k->lock);
	struct rt_page *pg = k->avail;
	if (!pg) {
		if (!(pg = rt__page_get())) {
			pthread_mutex_unlock(&k->lock);
			return NULL;
		}
		RT_UNPOISON(pg, RT_PAGE_HEAD);
		*pg = (struct rt_page){ .cap = (unsigned short)((RT_PAGE - RT_PAGE_HEAD) / bsize) };
		k->avail = pg;
	}
	if (pg->free) {
		b = pg->free;
		RT_UNPOISON(b, sizeof(void *));
		pg->free = *(void **)b;
		RT_POISON(b, sizeof(void *));
	} else {
		b = (char *)pg + RT_PAGE_HEAD + (size_t)pg->carved++ * bsize;
	}
	if (++pg->used == pg->cap) { /* full: off the list */
		k->avail = pg->next;
		if (pg->next)
			pg->next->prev = NULL;
		pg->next = NULL;
	}
	pthread_mutex_unlock(&k->lock);
	RT_UNPOISON(b, size);
	return b;
}

static void rt__small_free(void *b, size_t size)
{
	unsigned c = (unsigned)((size - 1) / RT_GRAIN);
	size_t bsize = (size_t)(c + 1) * RT_GRAIN;
	struct rt_class *k = &rt__class[c];
	struct rt_page *pg = (struct rt_page *)((uintptr_t)b & ~(uintptr_t)(RT_PAGE - 1));
	int give = 0;

	pthread_mutex_lock(&k->lock);
	RT_UNPOISON(b, bsize);
	*(void **)b = pg->free;
	RT_POISON(b, bsize); /* under the lock: the next owner unpoisons it */
	pg->free = b;
	if (pg->used-- == pg->cap) { /* it was full: back on the list */
		pg->prev = NULL;
		pg->next = k->avail;
		if (k->avail)
			k->avail->prev = pg;
		k->avail = pg;
	} else if (!pg->used && (pg->prev || pg->next)) { /* empty, and not the class's last */
		if (pg->prev)
			pg->prev->next = pg->next;
		else
			k->avail = pg->next;
		if (pg->next)
			pg->next->prev = pg->prev;
		give = 1;
	}
	pthread_mutex_unlock(&k->lock);
	if (give)
		rt__page_put(pg);
}

/* realloc for Lua's blocks (old: 0 for a new one; nsize 0 frees): small ones
 * from the pages, bigger ones from malloc.  NULL when out of memory, the
 * block then unchanged. */
static void *rt__realloc(void *ptr, size_t old, size_t nsize)
{
	int was_small = ptr && old <= RT_SMALL_MAX, small = nsize && nsize <= RT_SMALL_MAX;

	if (!nsize) {
		if (was_small)
			rt__small_free(ptr, old);
		else
			free(ptr);
		return NULL;
	}
	if (ptr && !was_small && !small)
		return realloc(ptr, nsize);
	if (was_small && small && (old - 1) / RT_GRAIN == (nsize - 1) / RT_GRAIN) {
		RT_POISON(ptr, old);
		RT_UNPOISON(ptr, nsize);
		return ptr;
	}
	void *p = small ? rt__small_alloc(nsize) : malloc(nsize);
	if (!p || !ptr)
		return p;
	memcpy(p, ptr, old < nsize ? old : nsize);
	rt__realloc(ptr, old, 0);
	return p;
}

void agent_rt_pages(size_t *in_use, size_t *empty)
{
	pthread_mutex_lock(&rt__pool.lock);
	*in_use = rt__pool.pages - rt__pool.nempty;
	*empty = rt__pool.nempty - rt__pool.cold;
	pthread_mutex_unlock(&rt__pool.lock);
}

/* --- limits ---------------------------------------------------------------------- */

static void *rt__alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	agent_rt *a = ud;
	size_t old = ptr ? osize : 0;

	if (nsize == 0) {
		a->used -= old;
		rt__realloc(ptr, old, 0);
		return NULL;
	}
	/* Over the cap, Lua collects all its garbage (an emergency collection,
	 * which frees blocks meanwhile) and asks again for the same block: only
	 * a second refusal, or a refusal Lua could not retry, is out of memory.
	 * So garbage never stops an agent that a full collection would keep
	 * under its cap, however far the incremental collector lags behind. */
	int retry = a->refused && ptr == a->refused_ptr && nsize == a->refused_nsize;
	if (a->refused && !retry)
		a->oom = 1;
	a->refused = 0;
	if (nsize > old && a->used + a->reserved + (nsize - old) > a->lim.memory) {
		if (retry || a->oom) {
			a->oom = 1;
		} else {
			a->refused = 1;
			a->refused_ptr = ptr;
			a->refused_nsize = nsize;
		}
		return NULL;
	}
	void *p = rt__realloc(ptr, old, nsize);
	if (!p) {
		a->oom = 1;
		return NULL;
	}
	a->used = a->used - old + nsize;
	/* What C builds (string.rep, upper, format, table.concat, the ..
	 * operator) costs time in proportion to its size, in one instruction:
	 * the bytes count towards the budget, which the hook checks. */
	if (a->in_event && nsize > old)
		a->count += (nsize - old) / RT_BYTES_PER_STEP;
	return p;
}

/* A refusal still pending after Lua returned was not retried: the error it
 * raised was out of memory, even if a pcall caught it. */
static void rt__settle(agent_rt *a)
{
	if (a->refused) {
		a->refused = 0;
		a->oom = 1;
	}
}

static int64_t rt__cpu_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void rt__hook(lua_State *L, lua_Debug *ar)
{
	agent_rt *a = rt__self(L);
	a->count += (uint64_t)lua_gethookcount(L);
	if (!a->in_event)
		return;
	if (a->count > a->lim.instructions)
		a->over_budget = 1;
	/* Some single instructions take time in proportion to their operands
	 * (== on two long strings compares them whole): counting instructions
	 * cannot bound those, the thread's CPU clock can. */
	if (!a->over_budget && rt__cpu_us() - a->cpu_start_us > (int64_t)a->lim.cpu_ms * 1000) {
		a->over_budget = 1;
		a->over_cpu = 1;
	}
	/* Past the budget, or the memory cap (the agent is dead, and a pcall
	 * loop would retry with a full collection on every refused allocation),
	 * every instruction raises, in this coroutine and in the main thread: a
	 * pcall (or coroutine.resume) in a loop, with the hook firing mostly in
	 * the inner loop, would otherwise catch each error and go on for ever. */
	if (a->over_budget || a->oom) {
		lua_sethook(L, rt__hook, LUA_MASKCOUNT, 1);
		lua_sethook(a->L, rt__hook, LUA_MASKCOUNT, 1);
		if (a->oom)
			luaL_error(L, "over its memory cap");
		if (a->over_cpu)
			luaL_error(L, "over its CPU time limit of %d ms", (int)a->lim.cpu_ms);
		luaL_error(L, "over its budget of %I instructions", (lua_Integer)a->lim.instructions);
	}
}

/* Pattern matching (agents/lpattern.c) runs in C where the hook never fires:
 * its steps are charged to the same budget, one step for one instruction, and
 * past it the match stops and every instruction raises, as in the hook. */
static void rt__pattern_charge(lua_State *L, size_t steps)
{
	agent_rt *a = rt__self(L);
	if (!a->in_event)
		return;
	a->count += steps;
	if (a->count <= a->lim.instructions && !a->over_budget && !a->oom)
		return;
	if (!a->over_budget && !a->oom)
		a->over_in_pattern = 1;
	a->over_budget = 1;
	lua_sethook(L, rt__hook, LUA_MASKCOUNT, 1);
	lua_sethook(a->L, rt__hook, LUA_MASKCOUNT, 1);
	luaL_error(L, "pattern too complex: step budget exceeded");
}

/* --- JSON <-> Lua ------------------------------------------------------------------ */

static json_t *rt__to_json(lua_State *L, int idx, int depth, char *err, size_t cap);

static json_t *rt__table_to_json(lua_State *L, int idx, int depth, char *err, size_t cap)
{
	lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0;
	int strings = 0, ints = 0;

	/* Each level holds a key and a value on the stack: past LUA_MINSTACK
	 * slots, it has to be made room for (without raising: no leak). */
	if (!lua_checkstack(L, 4)) {
		snprintf(err, cap, "out of memory");
		return NULL;
	}
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		count++;
		if (lua_type(L, -2) == LUA_TSTRING) {
			strings = 1;
		} else if (lua_isinteger(L, -2)) {
			/* Keys outside 1..n could make up for holes inside in the count. */
			lua_Integer k = lua_tointeger(L, -2);
			if (k < 1 || k > n) {
				lua_pop(L, 2);
				snprintf(err, cap, "an array must have keys 1 to n with no holes");
				return NULL;
			}
			ints = 1;
		} else {
			lua_pop(L, 2);
			snprintf(err, cap, "a table key must be a string or an integer");
			return NULL;
		}
		lua_pop(L, 1);
	}
	if (strings && ints) {
		snprintf(err, cap, "a table mixes string and integer keys");
		return NULL;
	}
	if (ints && count != n) {
		snprintf(err, cap, "an array must have keys 1 to n with no holes");
		return NULL;
	}
	json_t *out = ints ? json_array() : json_object();
	if (ints) {
		for (lua_Integer i = 1; i <= n; i++) {
			lua_rawgeti(L, idx, i);
			json_t *v = rt__to_json(L, lua_gettop(L), depth + 1, err, cap);
			lua_pop(L, 1);
			if (!v) {
				json_decref(out);
				return NULL;
			}
			json_array_append_new(out, v);
		}
		return out;
	}
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		size_t klen;
		const char *key = lua_tolstring(L, -2, &klen);
		json_t *v = rt__to_json(L, lua_gettop(L), depth + 1, err, cap);
		if (v && strlen(key) != klen) {
			json_decref(v); /* json_object_set_new would have taken it */
			v = NULL;
			snprintf(err, cap, "a key holds a NUL byte");
		}
		if (!v || json_object_set_new(out, key, v)) {
			if (v && !*err)
				snprintf(err, cap, "a key is not valid UTF-8 text");
			lua_pop(L, 2);
			json_decref(out);
			return NULL;
		}
		lua_pop(L, 1);
	}
	return out;
}

static json_t *rt__to_json(lua_State *L, int idx, int depth, char *err, size_t cap)
{
	if (depth > AGENT_JSON_DEPTH) {
		snprintf(err, cap, "data nested deeper than %d levels", AGENT_JSON_DEPTH);
		return NULL;
	}
	switch (lua_type(L, idx)) {
	case LUA_TNIL:
		return json_null();
	case LUA_TBOOLEAN:
		return json_boolean(lua_toboolean(L, idx));
	case LUA_TNUMBER:
		if (lua_isinteger(L, idx))
			return json_integer(lua_tointeger(L, idx));
		if (!isfinite(lua_tonumber(L, idx))) {
			snprintf(err, cap, "NaN and infinity cannot be sent as JSON");
			return NULL;
		}
		return json_real(lua_tonumber(L, idx));
	case LUA_TSTRING: {
		size_t len;
		const char *s = lua_tolstring(L, idx, &len);
		json_t *j = json_stringn(s, len);
		if (!j)
			snprintf(err, cap, "a string is not valid UTF-8 text");
		return j;
	}
	case LUA_TTABLE:
		return rt__table_to_json(L, idx, depth, err, cap);
	default:
		snprintf(err, cap, "a %s cannot be sent as JSON", luaL_typename(L, idx));
		return NULL;
	}
}

static void rt__push_json(lua_State *L, json_t *j, int depth)
{
	size_t i;
	const char *key;
	json_t *v;

	if (depth > AGENT_JSON_DEPTH) {
		lua_pushnil(L);
		return;
	}
	luaL_checkstack(L, 4, "JSON too deep");
	switch (json_typeof(j)) {
	case JSON_OBJECT:
		lua_createtable(L, 0, (int)json_object_size(j));
		json_object_foreach(j, key, v) {
			rt__push_json(L, v, depth + 1);
			lua_setfield(L, -2, key);
		}
		break;
	case JSON_ARRAY:
		lua_createtable(L, (int)json_array_size(j), 0);
		json_array_foreach(j, i, v) {
			rt__push_json(L, v, depth + 1);
			lua_rawseti(L, -2, (lua_Integer)i + 1);
		}
		break;
	case JSON_STRING:
		lua_pushlstring(L, json_string_value(j), json_string_length(j));
		break;
	case JSON_INTEGER:
		lua_pushinteger(L, json_integer_value(j));
		break;
	case JSON_REAL:
		lua_pushnumber(L, json_real_value(j));
		break;
	case JSON_TRUE:
	case JSON_FALSE:
		lua_pushboolean(L, json_is_true(j));
		break;
	default:
		lua_pushnil(L); /* null: nil (in arrays, a hole) */
	}
}

static int rt__push_json_call(lua_State *L)
{
	rt__push_json(L, lua_touserdata(L, 1), 0);
	return 1;
}

/* Pushes j (nil when NULL) and decrefs it (steals); values nested deeper
 * than AGENT_JSON_DEPTH become nil.  Raises only when out of memory, and
 * then without leaking j. */
static void rt__push_json_steal(lua_State *L, json_t *j)
{
	if (!j) {
		lua_pushnil(L);
		return;
	}
	lua_pushcfunction(L, rt__push_json_call);
	lua_pushlightuserdata(L, j);
	int rc = lua_pcall(L, 1, 1, 0);
	json_decref(j);
	if (rc != LUA_OK)
		lua_error(L);
}

/* The JSON text decoded (owned), or NULL when it is malformed. */
static json_t *rt__parse(const char *text)
{
	return json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
}

/* --- the API: device, server, timer, http ---------------------------------------- */

static int rt__device_on(lua_State *L)
{
	agent_rt *a = rt__self(L);
	const char *name = luaL_checkstring(L, 1);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	lua_rawgeti(L, LUA_REGISTRYINDEX, a->ref_handlers);
	lua_pushvalue(L, 2);
	lua_setfield(L, -2, name);
	return 0;
}

static int rt__set_ref(lua_State *L, int *ref)
{
	luaL_checktype(L, 1, LUA_TFUNCTION);
	luaL_unref(L, LUA_REGISTRYINDEX, *ref);
	lua_pushvalue(L, 1);
	*ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

static int rt__device_onconnect(lua_State *L) { return rt__set_ref(L, &rt__self(L)->ref_connect); }
static int rt__device_ondisconnect(lua_State *L) { return rt__set_ref(L, &rt__self(L)->ref_disconnect); }
static int rt__http_onrequest(lua_State *L) { return rt__set_ref(L, &rt__self(L)->ref_http); }

static int rt__device_send(lua_State *L)
{
	agent_rt *a = rt__self(L);
	const char *name = luaL_checkstring(L, 1);
	char err[128] = "";
	lua_settop(L, 2);
	json_t *j = rt__to_json(L, 2, 0, err, sizeof err);
	if (!j)
		return luaL_error(L, "device.send: %s", err);
	char *text = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
	json_decref(j);
	if (!text)
		return luaL_error(L, "device.send: out of memory");
	if (strlen(name) > 128) {
		free(text);
		return luaL_error(L, "device.send: the name is longer than 128 bytes");
	}
	a->host.send(a->host.ctx, name, text);
	free(text);
	return 0;
}

static int rt__device_isconnected(lua_State *L)
{
	agent_rt *a = rt__self(L);
	lua_pushboolean(L, a->host.is_connected(a->host.ctx));
	return 1;
}

static int rt__server_log_any(lua_State *L, int is_error)
{
	agent_rt *a = rt__self(L);
	size_t len;
	const char *msg = luaL_tolstring(L, 1, &len);
	char buf[RT_MAX_LOG + 1];
	snprintf(buf, sizeof buf, "%.*s", (int)(len > RT_MAX_LOG ? RT_MAX_LOG : len), msg);
	a->host.log(a->host.ctx, is_error, buf);
	return 0;
}

static int rt__server_log(lua_State *L) { return rt__server_log_any(L, 0); }
static int rt__server_error(lua_State *L) { return rt__server_log_any(L, 1); }

static int rt__server_save(lua_State *L)
{
	agent_rt *a = rt__self(L);
	char err[200] = "";
	lua_settop(L, 1);
	json_t *j = rt__to_json(L, 1, 0, err, sizeof err);
	if (!j)
		return luaL_error(L, "server.save: %s", err);
	char *text = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
	json_decref(j);
	if (!text)
		return luaL_error(L, "server.save: out of memory");
	size_t len = strlen(text);
	if (len > AGENT_SAVE_MAX) {
		free(text);
		return luaL_error(L, "server.save: %d bytes is over the %d-byte limit", (int)len, AGENT_SAVE_MAX);
	}
	int rc = a->host.save(a->host.ctx, text, len, err, sizeof err);
	free(text);
	if (rc)
		return luaL_error(L, "server.save: %s", err);
	return 0;
}

static int rt__server_load(lua_State *L)
{
	agent_rt *a = rt__self(L);
	char *text = a->host.load(a->host.ctx);
	json_t *j = text ? rt__parse(text) : NULL;
	free(text);
	rt__push_json_steal(L, j);
	return 1;
}

static int rt__timer_add(lua_State *L, int repeat)
{
	agent_rt *a = rt__self(L);
	lua_Number secs = luaL_checknumber(L, 1);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	if (!(secs >= 0.01) || secs > 86400.0 * 365)
		return luaL_error(L, "timer: seconds must be from 0.01 to a year");
	if (a->ntimers >= RT_MAX_TIMERS)
		return luaL_error(L, "timer: at most %d timers", RT_MAX_TIMERS);
	if (a->ntimers == a->timers_cap) {
		/* Doubling: one slot at a time copied the array on every add
		 * (quadratic, and seconds under ASan for 10,000 timers). */
		int cap = a->timers_cap ? a->timers_cap * 2 : 1;
		if (cap > RT_MAX_TIMERS)
			cap = RT_MAX_TIMERS;
		struct rt_timer *grown = realloc(a->timers, (size_t)cap * sizeof *grown);
		if (!grown)
			return luaL_error(L, "timer: out of memory");
		a->timers = grown;
		a->timers_cap = cap;
	}
	lua_pushvalue(L, 2);
	int ref = luaL_ref(L, LUA_REGISTRYINDEX); /* may raise: before the slot is taken */
	struct rt_timer *t = &a->timers[a->ntimers++];
	t->ref = ref;
	t->every = repeat ? (int64_t)(secs * 1000) : 0;
	t->due = a->host.now_ms(a->host.ctx) + (int64_t)(secs * 1000);
	t->id = ++a->next_timer_id;
	/* The handle: {id = n} with a cancel method. */
	lua_createtable(L, 0, 1);
	lua_pushinteger(L, t->id);
	lua_setfield(L, -2, "id");
	luaL_setmetatable(L, "tender.timer");
	return 1;
}

static int rt__timer_after(lua_State *L) { return rt__timer_add(L, 0); }
static int rt__timer_every(lua_State *L) { return rt__timer_add(L, 1); }

static void rt__timer_remove(agent_rt *a, int i)
{
	luaL_unref(a->L, LUA_REGISTRYINDEX, a->timers[i].ref);
	a->timers[i] = a->timers[--a->ntimers];
}

static int rt__timer_cancel(lua_State *L)
{
	agent_rt *a = rt__self(L);
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_getfield(L, 1, "id");
	lua_Integer id = lua_tointeger(L, -1);
	for (int i = 0; i < a->ntimers; i++)
		if (a->timers[i].id == id) {
			rt__timer_remove(a, i);
			break;
		}
	return 0;
}

static int rt__res_header(lua_State *L)
{
	agent_rt *a = rt__self(L);
	const char *k = luaL_checkstring(L, 1), *v = luaL_checkstring(L, 2);
	if (!a->res)
		return luaL_error(L, "res.header: the request has been answered");
	if (strpbrk(k, "\r\n:") || strpbrk(v, "\r\n") || !*k)
		return luaL_error(L, "res.header: a header name or value may not contain CR, LF (or ':' in names)");
	int n = 0;
	while (a->res->headers && a->res->headers[n])
		n++;
	if (n / 2 >= RT_MAX_HEADERS)
		return luaL_error(L, "res.header: at most %d headers", RT_MAX_HEADERS);
	char **grown = realloc(a->res->headers, (size_t)(n + 3) * sizeof *grown);
	if (!grown)
		return luaL_error(L, "res.header: out of memory");
	a->res->headers = grown;
	grown[n] = strdup(k);
	grown[n + 1] = strdup(v);
	grown[n + 2] = NULL;
	return 0;
}

static int rt__res_send(lua_State *L)
{
	agent_rt *a = rt__self(L);
	lua_Integer status = luaL_checkinteger(L, 1);
	char err[128] = "";
	if (!a->res || a->res_sent)
		return luaL_error(L, "res.send: the request has been answered already");
	if (status < 100 || status > 599)
		return luaL_error(L, "res.send: status must be from 100 to 599");
	size_t len = 0;
	char *body = NULL;
	if (lua_istable(L, 2)) {
		json_t *j = rt__to_json(L, 2, 0, err, sizeof err);
		if (!j)
			return luaL_error(L, "res.send: %s", err);
		body = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
		json_decref(j);
		len = body ? strlen(body) : 0;
		lua_pushcfunction(L, rt__res_header);
		lua_pushstring(L, "Content-Type");
		lua_pushstring(L, "application/json");
		if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
			free(body);
			return lua_error(L);
		}
	} else if (!lua_isnoneornil(L, 2)) {
		const char *s = luaL_checklstring(L, 2, &len);
		body = malloc(len + 1);
		if (body) {
			memcpy(body, s, len);
			body[len] = '\0';
		}
	} else {
		body = strdup("");
	}
	if (!body)
		return luaL_error(L, "res.send: out of memory");
	a->res->status = (int)status;
	a->res->body = body;
	a->res->body_len = len;
	a->res_sent = 1;
	return 0;
}

/* string.rep in C runs where the count hook cannot stop it: bound it. */
static int rt__string_rep(lua_State *L)
{
	size_t len;
	luaL_checklstring(L, 1, &len);
	lua_Integer n = luaL_checkinteger(L, 2);
	size_t seplen = 0;
	if (!lua_isnoneornil(L, 3))
		luaL_checklstring(L, 3, &seplen);
	if (n > 0 && (double)(len + seplen) * (double)n > RT_MAX_REP)
		return luaL_error(L, "string.rep: the result would be over %d bytes", RT_MAX_REP);
	if (len + seplen == 0) { /* the original would loop n times for nothing */
		lua_pushliteral(L, "");
		return 1;
	}
	lua_getfield(L, lua_upvalueindex(1), "rep");
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, 1);
	return 1;
}

/* table.insert/remove/move/sort/concat loop in C, where the count hook cannot
 * stop them, as far as #t or their range says, and #t can say 2^40 (a __len,
 * or a sparse table such as {[1]=1, [2]=1, [4]=1, ..., [2^40]=1}).  A table
 * cannot hold more than memory/16 elements: refuse ranges longer than that. */
static int rt__table_guard(lua_State *L)
{
	agent_rt *a = rt__self(L);
	const char *fn = lua_tostring(L, lua_upvalueindex(2));
	lua_Unsigned most = a->lim.memory / 16;
	luaL_checktype(L, 1, LUA_TTABLE);
	if (luaL_getmetafield(L, 1, "__len") != LUA_TNIL)
		return luaL_error(L, "table.%s: not for a table with a __len metamethod", fn);
	lua_Integer from = 1, to = (lua_Integer)lua_rawlen(L, 1);
	if (strcmp(fn, "move") == 0) {
		from = luaL_checkinteger(L, 2);
		to = luaL_checkinteger(L, 3);
	} else if (strcmp(fn, "concat") == 0) {
		from = luaL_optinteger(L, 3, 1);
		to = luaL_optinteger(L, 4, to);
	}
	if (to >= from && (lua_Unsigned)to - (lua_Unsigned)from >= most)
		return luaL_error(L, "table.%s: over %I elements", fn, (lua_Integer)most);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
	return lua_gettop(L);
}

/* Lua runs finalizers (__gc) with hooks off, where no budget can stop them:
 * no __gc for agents.  An object is marked for finalization only if its
 * metatable has a __gc field when setmetatable is called. */
static void rt__lazy_all(lua_State *L);

/* Whether index holds the globals while they still have rt__open_lazy's
 * metatable (upvalue 2 of setmetatable and getmetatable). */
static int rt__lazy_globals(lua_State *L, int index)
{
	if (!lua_istable(L, index))
		return 0;
	lua_pushglobaltable(L);
	int is = lua_rawequal(L, index, -1);
	lua_pop(L, 1);
	if (!is || !lua_getmetatable(L, index))
		return 0;
	is = lua_rawequal(L, -1, lua_upvalueindex(2));
	lua_pop(L, 1);
	return is;
}

static int rt__setmetatable(lua_State *L)
{
	/* The agent's own metatable on the globals replaces the lazy one: every
	 * library not opened yet is opened first. */
	if (rt__lazy_globals(L, 1))
		rt__lazy_all(L);
	if (lua_istable(L, 2)) {
		lua_pushliteral(L, "__gc");
		if (lua_rawget(L, 2) != LUA_TNIL)
			return luaL_error(L, "setmetatable: __gc is not available to agents");
		lua_pop(L, 1);
	}
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, 1);
	return 1;
}

/* The globals' lazy metatable is not the agent's: getmetatable(_G) is nil,
 * as if every library had been opened at the start. */
static int rt__getmetatable(lua_State *L)
{
	if (rt__lazy_globals(L, 1)) {
		lua_pushnil(L);
		return 1;
	}
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, 1);
	return 1;
}

/* xpcall's message handler runs before the error unwinds; after an error
 * from the count hook, hooks are still off there, so a handler that loops
 * would never stop: past the budget (or the memory cap) it is skipped. */
static int rt__xpcall_msgh(lua_State *L)
{
	agent_rt *a = rt__self(L);
	if (a->over_budget || a->oom)
		return 1;
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, 1);
	return 1;
}

static int rt__xpcall_k(lua_State *L, int status, lua_KContext ctx)
{
	return lua_gettop(L);
}

static int rt__xpcall(lua_State *L)
{
	luaL_checktype(L, 2, LUA_TFUNCTION);
	lua_pushvalue(L, 2);
	lua_pushcclosure(L, rt__xpcall_msgh, 1);
	lua_replace(L, 2);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, rt__xpcall_k);
	return lua_gettop(L);
}

/* load(chunk, name, mode, env) with mode forced to text: no bytecode. */
static int rt__load(lua_State *L)
{
	int nargs = lua_gettop(L);
	lua_settop(L, 4); /* load(s): index 2 must be nil, not what is pushed next */
	lua_pushvalue(L, lua_upvalueindex(1));
	for (int i = 1; i <= 2; i++)
		lua_pushvalue(L, i);
	lua_pushstring(L, "t");
	if (nargs >= 4)
		lua_pushvalue(L, 4);
	lua_call(L, nargs >= 4 ? 4 : 3, 2);
	return 2;
}

static void rt__set_funcs(lua_State *L, const char *global, const luaL_Reg *fns)
{
	lua_newtable(L);
	luaL_setfuncs(L, fns, 0);
	lua_setglobal(L, global);
}

/* --- the libraries ----------------------------------------------------------- */

/* The string metatable cannot be read or replaced. */
static void rt__string_protect(lua_State *L)
{
	lua_pushliteral(L, "");
	lua_getmetatable(L, -1);
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 2);
}

/* Opened at their first use (the globals' __index, rt__lazy_index), which
 * saves an agent that never uses them about 8 KB of its heap (math alone is
 * 3.8 KB, string 2.5); what the agent sees is the same as if they were
 * opened at the start, but for rawget(_G, name) and next(_G) before that
 * first use.  `string` is also opened by the first method call on a string
 * (rt__string_index), and its name is only the way in: `string = nil` does
 * not stop ("x"):upper(). */
static const char *const rt__lazy_names[] = { "table", "math", "utf8", "coroutine", "os", "string", NULL };
#define RT_LIB_STRING 5
/* What each takes when opened (Lua 5.4, 64 bits; os with its full table,
 * garbage until the next collection; string with the sandbox's wrappers).
 * The memory cap counts it for every library not opened yet
 * (agent_rt.reserved), so an agent fits under its cap exactly when it would
 * with every library opened at the start, and the first use of a library
 * never runs out of memory where that would not. */
static const size_t rt__lazy_bytes[] = { 720, 2840, 420, 500, 940, 2200 };

/* Library i is the agent's now (opened, or its name assigned).  The string
 * library's reserve goes only when it is opened (rt__string_open): the
 * string methods reach it whatever its global name holds. */
static void rt__lazy_done(agent_rt *a, int i)
{
	a->libs_done |= 1u << i;
	if (i != RT_LIB_STRING)
		a->reserved -= rt__lazy_bytes[i];
}

/* Pushes the string metatable's __index: the string library once opened,
 * rt__string_index before. */
static void rt__string_lib(lua_State *L)
{
	lua_pushliteral(L, "");
	lua_getmetatable(L, -1);
	lua_getfield(L, -1, "__index");
	lua_replace(L, -3);
	lua_pop(L, 1);
}

/* Pushes the string library, opened (and made the strings' __index) at the
 * first call, with the sandbox's changes: no dump, rep bounded, the
 * patterns counted. */
static void rt__string_open(lua_State *L)
{
	agent_rt *a = rt__self(L);
	if (a->string_open) {
		rt__string_lib(L);
		return;
	}
	a->string_open = 1;
	a->reserved -= rt__lazy_bytes[RT_LIB_STRING];
	/* A new metatable for strings, with the library as __index. */
	luaopen_string(L);
	lua_pushnil(L);
	lua_setfield(L, -2, "dump");
	lua_newtable(L); /* the original rep, kept out of reach */
	lua_getfield(L, -2, "rep");
	lua_setfield(L, -2, "rep");
	lua_pushcclosure(L, rt__string_rep, 1);
	lua_setfield(L, -2, "rep");
	lpat_open(L, rt__pattern_charge); /* find, match, gmatch, gsub: counted */
	rt__string_protect(L);
}

/* __index of strings until the library is opened: ("x"):upper() opens it. */
static int rt__string_index(lua_State *L)
{
	rt__string_open(L);
	lua_pushvalue(L, 2);
	lua_gettable(L, -2);
	return 1;
}

/* Pushes library i of rt__lazy_names, as the sandbox has it. */
static void rt__open_lib(lua_State *L, int i)
{
	switch (i) {
	case 0:
		luaopen_table(L);
		for (const char *const *f = (const char *const[]){ "insert", "remove", "move", "sort", "concat",
								  NULL };
		     *f; f++) {
			lua_getfield(L, -1, *f);
			lua_pushstring(L, *f);
			lua_pushcclosure(L, rt__table_guard, 2);
			lua_setfield(L, -2, *f);
		}
		break;
	case 1:
		luaopen_math(L);
		break;
	case 2:
		luaopen_utf8(L);
		break;
	case 3:
		luaopen_coroutine(L);
		break;
	case RT_LIB_STRING:
		rt__string_open(L);
		break;
	default: /* os: only the clock */
		luaopen_os(L);
		lua_createtable(L, 0, 3);
		for (const char *const *f = (const char *const[]){ "time", "clock", "date", NULL }; *f; f++) {
			lua_getfield(L, -2, *f);
			lua_setfield(L, -2, *f);
		}
		lua_remove(L, -2);
		break;
	}
}

static int rt__lazy_find(lua_State *L, int index)
{
	if (lua_type(L, index) != LUA_TSTRING)
		return -1;
	const char *k = lua_tostring(L, index);
	for (int i = 0; rt__lazy_names[i]; i++)
		if (strcmp(k, rt__lazy_names[i]) == 0)
			return i;
	return -1;
}

/* __index of the globals: a library at its first use, else nil. */
static int rt__lazy_index(lua_State *L)
{
	agent_rt *a = rt__self(L);
	int i = rt__lazy_find(L, 2);
	if (i < 0 || (a->libs_done & (1u << i))) {
		lua_pushnil(L);
		return 1;
	}
	rt__lazy_done(a, i);
	rt__open_lib(L, i);
	lua_pushvalue(L, 2);
	lua_pushvalue(L, -2);
	lua_rawset(L, 1);
	return 1;
}

/* __newindex of the globals: a library's name assigned before its first
 * use is the agent's from then on (`math = nil` stays nil). */
static int rt__lazy_newindex(lua_State *L)
{
	int i = rt__lazy_find(L, 2);
	if (i >= 0 && !(rt__self(L)->libs_done & (1u << i)))
		rt__lazy_done(rt__self(L), i);
	lua_settop(L, 3);
	lua_rawset(L, 1);
	return 0;
}

static void rt__lazy_all(lua_State *L)
{
	agent_rt *a = rt__self(L);
	lua_pushglobaltable(L);
	for (int i = 0; rt__lazy_names[i]; i++) {
		if (a->libs_done & (1u << i))
			continue;
		rt__lazy_done(a, i);
		rt__open_lib(L, i);
		lua_setfield(L, -2, rt__lazy_names[i]); /* the key is absent: a raw set */
	}
	lua_pop(L, 1);
}

/* Pushes the globals' metatable: __index and __newindex above. */
static void rt__open_lazy(lua_State *L)
{
	agent_rt *a = rt__self(L);
	for (int i = 0; rt__lazy_names[i]; i++)
		a->reserved += rt__lazy_bytes[i];
	lua_createtable(L, 0, 2);
	lua_pushcfunction(L, rt__lazy_index);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, rt__lazy_newindex);
	lua_setfield(L, -2, "__newindex");
	lua_pushglobaltable(L);
	lua_pushvalue(L, -2);
	lua_setmetatable(L, -2);
	lua_pop(L, 1);
}

static void rt__open_sandbox(lua_State *L)
{
	/* Not through luaL_requiref: without require, package.loaded would
	 * only hold memory. */
	luaopen_base(L);
	lua_pop(L, 1);
	/* The string metatable with its arithmetic ("10" + 1), and the library
	 * itself left for the first use (rt__string_index): the library this
	 * makes is garbage at the collection after the top level. */
	luaopen_string(L);
	lua_pop(L, 1);
	lua_pushliteral(L, "");
	lua_getmetatable(L, -1);
	lua_pushcfunction(L, rt__string_index);
	lua_setfield(L, -2, "__index");
	lua_pop(L, 2);
	rt__string_protect(L);
	rt__open_lazy(L); /* its metatable stays on the stack for the wrappers */
	for (const char *const *g = (const char *const[]){ "dofile", "loadfile", "collectgarbage", "require",
							  "print", NULL }; *g; g++) {
		lua_pushnil(L);
		lua_setglobal(L, *g);
	}
	lua_getglobal(L, "load");
	lua_pushcclosure(L, rt__load, 1);
	lua_setglobal(L, "load");
	lua_getglobal(L, "setmetatable");
	lua_pushvalue(L, -2);
	lua_pushcclosure(L, rt__setmetatable, 2);
	lua_setglobal(L, "setmetatable");
	lua_getglobal(L, "getmetatable");
	lua_pushvalue(L, -2);
	lua_pushcclosure(L, rt__getmetatable, 2);
	lua_setglobal(L, "getmetatable");
	lua_pop(L, 1);
	lua_getglobal(L, "xpcall");
	lua_pushcclosure(L, rt__xpcall, 1);
	lua_setglobal(L, "xpcall");
}

static void rt__open_api(lua_State *L)
{
	static const luaL_Reg device[] = {
		{ "on", rt__device_on }, { "send", rt__device_send }, { "onconnect", rt__device_onconnect },
		{ "ondisconnect", rt__device_ondisconnect }, { "isconnected", rt__device_isconnected },
		{ NULL, NULL },
	};
	static const luaL_Reg server[] = {
		{ "log", rt__server_log }, { "error", rt__server_error }, { "save", rt__server_save },
		{ "load", rt__server_load }, { NULL, NULL },
	};
	static const luaL_Reg timer[] = {
		{ "after", rt__timer_after }, { "every", rt__timer_every }, { "cancel", rt__timer_cancel },
		{ NULL, NULL },
	};
	static const luaL_Reg http[] = { { "onrequest", rt__http_onrequest }, { NULL, NULL } };
	rt__set_funcs(L, "device", device);
	rt__set_funcs(L, "server", server);
	rt__set_funcs(L, "timer", timer);
	rt__set_funcs(L, "http", http);
	luaL_newmetatable(L, "tender.timer");
	lua_newtable(L);
	lua_pushcfunction(L, rt__timer_cancel);
	lua_setfield(L, -2, "cancel");
	lua_setfield(L, -2, "__index");
	lua_pushboolean(L, 0);
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 1);
	/* print goes to the device's log, as imp agents' server.log does. */
	lua_pushcfunction(L, rt__server_log);
	lua_setglobal(L, "print");
}

/* --- running --------------------------------------------------------------------- */

/* The libraries, the API and the handler table: run protected (rt__protect). */
static int rt__open(lua_State *L)
{
	agent_rt *a = rt__self(L);
	rt__open_sandbox(L);
	rt__open_api(L);
	lua_newtable(L);
	a->ref_handlers = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

/* Runs fn(ud) protected, leaving its results on the stack.  It builds an
 * event's arguments: only memory can fail there (reported as AGENT_OOM). */
static int rt__protect(agent_rt *a, lua_CFunction fn, void *ud)
{
	lua_State *L = a->L;
	int top = lua_gettop(L);
	lua_pushcfunction(L, fn);
	lua_pushlightuserdata(L, ud);
	int rc = lua_pcall(L, 1, LUA_MULTRET, 0);
	rt__settle(a);
	if (rc == LUA_OK && !a->oom)
		return AGENT_OK;
	if (rc != LUA_OK && rc != LUA_ERRMEM && !a->oom) {
		const char *msg = lua_tostring(L, -1);
		char line[300];
		snprintf(line, sizeof line, "error preparing an event: %.200s", msg ? msg : "?");
		a->host.log(a->host.ctx, 1, line);
		lua_settop(L, top);
		return AGENT_ERROR;
	}
	lua_settop(L, top);
	a->oom = 1;
	return AGENT_OOM;
}

static int rt__traceback(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);
	luaL_traceback(L, L, msg ? msg : "(an error object that is not a string)", 1);
	return 1;
}

/* Calls the function under `nargs` arguments on the stack, within the budget.
 * `what` names the handler in the log line. */
static int rt__call(agent_rt *a, int nargs, const char *what)
{
	lua_State *L = a->L;
	int base = lua_gettop(L) - nargs;
	lua_pushcfunction(L, rt__traceback);
	lua_insert(L, base);
	a->count = 0;
	a->over_budget = 0;
	a->over_in_pattern = 0;
	a->over_cpu = 0;
	a->cpu_start_us = rt__cpu_us();
	lua_sethook(L, rt__hook, LUA_MASKCOUNT, RT_HOOK_EVERY); /* the hook may have left it at 1 */
	a->in_event = 1;
	int rc = lua_pcall(L, nargs, 0, base);
	a->in_event = 0;
	rt__settle(a);
	int out = AGENT_OK;
	if (a->oom || rc == LUA_ERRMEM) {
		out = AGENT_OOM;
	} else if (a->over_budget) {
		char line[300];
		if (a->over_cpu)
			snprintf(line, sizeof line, "%s stopped: over its CPU time limit of %u ms", what,
				 (unsigned)a->lim.cpu_ms);
		else if (a->over_in_pattern)
			snprintf(line, sizeof line, "%s stopped: pattern too complex: step budget exceeded "
				 "(over its budget of %llu instructions)", what, (unsigned long long)a->lim.instructions);
		else
			snprintf(line, sizeof line, "%s stopped: over its budget of %llu instructions", what,
				 (unsigned long long)a->lim.instructions);
		a->host.log(a->host.ctx, 1, line);
		out = AGENT_BUDGET;
	} else if (rc != LUA_OK) {
		char *line = NULL;
		const char *msg = lua_tostring(L, -1);
		if (asprintf(&line, "error in %s: %s", what, msg ? msg : "?") >= 0) {
			a->host.log(a->host.ctx, 1, line);
			free(line);
		}
		out = AGENT_ERROR;
	}
	lua_settop(L, base - 1 < 0 ? 0 : base - 1);
	return out;
}

int agent_rt_check(const char *source, size_t len, tn_error *err)
{
	lua_State *L = luaL_newstate();
	if (!L)
		return tn_err(err, TN_ENOMEM, "out of memory");
	int rc = luaL_loadbufferx(L, source, len, "=agent.lua", "t");
	if (rc != LUA_OK)
		tn_err(err, TN_EINVAL, "%s", lua_tostring(L, -1));
	lua_close(L);
	return rc == LUA_OK ? 0 : TN_EINVAL;
}

int agent_rt_new(agent_rt **out, const char *source, size_t len, const agent_limits *lim,
		 const agent_host *host, tn_error *err)
{
	agent_rt *a = calloc(1, sizeof *a);
	if (!a)
		return tn_err(err, TN_ENOMEM, "out of memory");
	a->host = *host;
	a->lim.memory = lim && lim->memory ? lim->memory : 1 << 20;
	a->lim.instructions = lim && lim->instructions ? lim->instructions : 10000000;
	a->lim.cpu_ms = lim && lim->cpu_ms ? lim->cpu_ms : 2000;
	a->L = lua_newstate(rt__alloc, a);
	if (!a->L) {
		free(a);
		return tn_err(err, TN_ENOMEM, "out of memory");
	}
	*(agent_rt **)lua_getextraspace(a->L) = a;
	/* A collection cycle starts when the heap reaches RT_GC_PAUSE % of what
	 * the last one left (Lua's default: 200): an agent that handles
	 * messages holds that much less garbage, for no CPU time measured (an
	 * echo agent of 9.6 KB held 14.9 KB on average under messages at 200,
	 * 11.1 KB at 125; one of 375 KB, 586 KB and 438 KB).  Not the
	 * generational mode: Lua 5.4.4 sets no proper target for the next cycle
	 * after a full collection in it, and agents have those (the one after
	 * the top level, the emergency ones at the memory cap). */
	lua_gc(a->L, LUA_GCINC, RT_GC_PAUSE, 0, 0);
	a->ref_connect = a->ref_disconnect = a->ref_http = LUA_NOREF;
	lua_sethook(a->L, rt__hook, LUA_MASKCOUNT, RT_HOOK_EVERY);
	if (rt__protect(a, rt__open, NULL) != AGENT_OK || a->oom) {
		agent_rt_free(a);
		return tn_err(err, TN_ENOMEM, "over the memory cap while starting");
	}
	int loaded = luaL_loadbufferx(a->L, source, len, "=agent.lua", "t");
	rt__settle(a);
	if (loaded != LUA_OK) {
		tn_err(err, a->oom ? TN_ENOMEM : TN_EINVAL, "%s", lua_tostring(a->L, -1));
		int code = a->oom ? TN_ENOMEM : TN_EINVAL;
		agent_rt_free(a);
		return code;
	}
	/* The top level registers handlers; its errors are logged like a handler's. */
	int rc = rt__call(a, 0, "the top level");
	if (rc == AGENT_OOM) {
		agent_rt_free(a);
		return tn_err(err, TN_ENOMEM, "over the memory cap while starting");
	}
	/* The compiler's and the top level's garbage (about 2 KB) would stay
	 * until the collector's next cycle, which an idle agent may not reach
	 * for a long time. */
	lua_gc(a->L, LUA_GCCOLLECT);
	*out = a;
	return 0;
}

void agent_rt_free(agent_rt *a)
{
	if (!a)
		return;
	if (a->L)
		lua_close(a->L);
	free(a->timers);
	free(a);
}

struct rt__msg {
	const char *name, *data;
};

/* Pushes the handler and the decoded data, or nothing without a handler. */
static int rt__message_args(lua_State *L)
{
	agent_rt *a = rt__self(L);
	const struct rt__msg *m = lua_touserdata(L, 1);
	lua_rawgeti(L, LUA_REGISTRYINDEX, a->ref_handlers);
	lua_getfield(L, -1, m->name);
	if (!lua_isfunction(L, -1))
		return 0;
	rt__push_json_steal(L, rt__parse(m->data));
	return 2;
}

int agent_rt_message(agent_rt *a, const char *name, const char *data_json)
{
	lua_State *L = a->L;
	if (a->oom)
		return AGENT_OOM;
	int top = lua_gettop(L);
	struct rt__msg m = { name, data_json ? data_json : "null" };
	int rc = rt__protect(a, rt__message_args, &m);
	if (rc != AGENT_OK || lua_gettop(L) == top)
		return rc; /* no handler for it: ignored */
	char what[180];
	snprintf(what, sizeof what, "the '%.128s' handler", name);
	return rt__call(a, 1, what);
}

static int rt__call_ref(agent_rt *a, int ref, const char *what)
{
	if (a->oom)
		return AGENT_OOM;
	if (ref == LUA_NOREF)
		return AGENT_OK;
	lua_rawgeti(a->L, LUA_REGISTRYINDEX, ref);
	return rt__call(a, 0, what);
}

int agent_rt_connect(agent_rt *a)
{
	return rt__call_ref(a, a->ref_connect, "the onconnect handler");
}

int agent_rt_disconnect(agent_rt *a)
{
	return rt__call_ref(a, a->ref_disconnect, "the ondisconnect handler");
}

/* Pushes the handler, req and res. */
static int rt__http_args(lua_State *L)
{
	agent_rt *a = rt__self(L);
	const agent_http_req *req = lua_touserdata(L, 1);
	lua_rawgeti(L, LUA_REGISTRYINDEX, a->ref_http);
	lua_createtable(L, 0, 5);
	lua_pushstring(L, req->method);
	lua_setfield(L, -2, "method");
	lua_pushstring(L, req->path);
	lua_setfield(L, -2, "path");
	lua_pushstring(L, req->query ? req->query : "");
	lua_setfield(L, -2, "query");
	lua_pushlstring(L, req->body ? req->body : "", req->body_len);
	lua_setfield(L, -2, "body");
	lua_newtable(L);
	for (const char *const *h = req->headers; h && h[0] && h[1]; h += 2) {
		char name[128];
		size_t i;
		for (i = 0; h[0][i] && i < sizeof name - 1; i++)
			name[i] = (char)((h[0][i] >= 'A' && h[0][i] <= 'Z') ? h[0][i] + 32 : h[0][i]);
		name[i] = '\0';
		lua_pushstring(L, h[1]);
		lua_setfield(L, -2, name);
	}
	lua_setfield(L, -2, "headers");
	lua_createtable(L, 0, 2);
	lua_pushcfunction(L, rt__res_header);
	lua_setfield(L, -2, "header");
	lua_pushcfunction(L, rt__res_send);
	lua_setfield(L, -2, "send");
	return 3;
}

int agent_rt_http(agent_rt *a, const agent_http_req *req, agent_http_res *res)
{
	memset(res, 0, sizeof *res);
	if (a->oom)
		return AGENT_OOM;
	if (a->ref_http == LUA_NOREF)
		return AGENT_OK;
	int rc = rt__protect(a, rt__http_args, (void *)req);
	if (rc != AGENT_OK)
		return rc;
	a->res = res;
	a->res_sent = 0;
	rc = rt__call(a, 2, "the http.onrequest handler");
	a->res = NULL;
	if (rc == AGENT_OK && !a->res_sent) {
		agent_http_res_clear(res);
		res->status = 500;
		res->body = strdup("the agent did not answer");
		res->body_len = res->body ? strlen(res->body) : 0;
	}
	return rc;
}

void agent_http_res_clear(agent_http_res *res)
{
	free(res->body);
	if (res->headers)
		for (char **h = res->headers; *h; h++)
			free(*h);
	free(res->headers);
	memset(res, 0, sizeof *res);
}

int64_t agent_rt_next_timer(agent_rt *a)
{
	int64_t next = -1;
	for (int i = 0; i < a->ntimers; i++)
		if (next < 0 || a->timers[i].due < next)
			next = a->timers[i].due;
	return next;
}

struct rt__due {
	int64_t due;
	int id;
};

static int rt__due_cmp(const void *x, const void *y)
{
	const struct rt__due *p = x, *q = y;
	if (p->due != q->due)
		return p->due < q->due ? -1 : 1;
	return (p->id > q->id) - (p->id < q->id);
}

int agent_rt_run_timers(agent_rt *a, int64_t now)
{
	int worst = AGENT_OK, ndue = 0;
	if (a->oom)
		return AGENT_OOM;
	/* The due timers, picked first and found again by id: a handler may add
	 * timers (they wait for the next round) or cancel them, which moves
	 * others around in the array. */
	struct rt__due *due = malloc((size_t)(a->ntimers ? a->ntimers : 1) * sizeof *due);
	if (!due)
		return AGENT_OK; /* tried again on the next round */
	for (int i = 0; i < a->ntimers; i++)
		if (a->timers[i].due <= now)
			due[ndue++] = (struct rt__due){ a->timers[i].due, a->timers[i].id };
	qsort(due, (size_t)ndue, sizeof *due, rt__due_cmp);
	for (int d = 0; d < ndue; d++) {
		int i = 0;
		while (i < a->ntimers && a->timers[i].id != due[d].id)
			i++;
		if (i == a->ntimers)
			continue; /* cancelled by an earlier handler */
		struct rt_timer *t = &a->timers[i];
		lua_rawgeti(a->L, LUA_REGISTRYINDEX, t->ref);
		if (t->every)
			t->due = now + t->every;
		else
			rt__timer_remove(a, i);
		int rc = rt__call(a, 0, "a timer");
		if (rc > worst)
			worst = rc;
		if (rc == AGENT_OOM)
			break;
	}
	free(due);
	return worst;
}

int agent_rt_timers(const agent_rt *a, agent_timer **out, int *next_id)
{
	*next_id = a->next_timer_id + 1;
	*out = NULL;
	if (!a->ntimers)
		return 0;
	if (!(*out = malloc((size_t)a->ntimers * sizeof **out)))
		return -1;
	for (int i = 0; i < a->ntimers; i++)
		(*out)[i] = (agent_timer){ a->timers[i].id, a->timers[i].due, a->timers[i].every };
	return a->ntimers;
}

static int rt__timer_id_cmp(const void *x, const void *y)
{
	const agent_timer *p = x, *q = y;
	return (p->id > q->id) - (p->id < q->id);
}

int agent_rt_rearm_timers(agent_rt *a, const agent_timer *t, int n, int next_id)
{
	int found = 0;
	agent_timer *sorted = malloc((size_t)(n ? n : 1) * sizeof *sorted);
	if (!sorted)
		return -1; /* out of memory: the timers stay as they were */
	if (n)
		memcpy(sorted, t, (size_t)n * sizeof *sorted);
	qsort(sorted, (size_t)n, sizeof *sorted, rt__timer_id_cmp);
	for (int i = 0; i < a->ntimers;) {
		agent_timer key = { .id = a->timers[i].id };
		const agent_timer *k = n ? bsearch(&key, sorted, (size_t)n, sizeof *sorted, rt__timer_id_cmp) : NULL;
		if (!k) {
			rt__timer_remove(a, i); /* moves the last one here: look at i again */
			continue;
		}
		a->timers[i].due = k->due;
		a->timers[i].every = k->every;
		found++;
		i++;
	}
	free(sorted);
	if (next_id - 1 > a->next_timer_id)
		a->next_timer_id = next_id - 1;
	return found;
}

size_t agent_rt_memory(const agent_rt *a)
{
	return a->used;
}
