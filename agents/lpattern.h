/* agents/lpattern.h -- string.find, match, gmatch and gsub for agents: Lua
 * 5.4.4's pattern matcher (lstrlib.c, MIT licence) with a step counter, so a
 * backtracking pattern cannot run for minutes in C where the instruction
 * hook never fires (docs/agents.md, Limits).
 * Owns: nothing; the step charge goes to the caller's function.
 * Threads: whatever thread runs the lua_State. */
#ifndef TN_AGENT_LPATTERN_H
#define TN_AGENT_LPATTERN_H

#include <lua.h>
#include <stddef.h>

/* Steps a match may take before it reports them (a step: one call of the
 * matcher, one character tried by a repetition or a %b, 16 bytes compared). */
#define LPAT_CHUNK 1024

/* Called with the steps taken since the last call, every LPAT_CHUNK steps and
 * when a call ends; raises (luaL_error) to stop the match. */
typedef void (*lpat_charge)(lua_State *L, size_t steps);

/* Replaces find, match, gmatch and gsub in the table at the top of the stack
 * with the counted versions, which behave exactly like Lua 5.4.4's. */
void lpat_open(lua_State *L, lpat_charge charge);

#endif
