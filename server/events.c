/* server/events.c -- log events and their JSON and text forms (see events.h). */
#include "events.h"

#include <string.h>

#include "logfmt.h"
#include "tn.h"

static const char *const events__names[EV__COUNT] = {
	[EV_STATUS] = "status", [EV_DEVICE] = "device", [EV_AGENT] = "agent", [EV_FIRMWARE] = "firmware",
};

const char *events_type_name(event_type t)
{
	return (t >= 0 && t < EV__COUNT) ? events__names[t] : "unknown";
}

int events_type_parse(const char *name)
{
	for (int i = 0; i < EV__COUNT; i++)
		if (strcmp(name, events__names[i]) == 0)
			return i;
	return -1;
}

json_t *events_to_json(const tn_event *ev)
{
	char id[17], ts[32];

	tn_device_id_format(ev->device, id);
	if (logfmt_iso8601(ts, sizeof ts, ev->ts_ms) < 0)
		return NULL;
	return json_pack("{sI ss ss ss ss}", "id", (json_int_t)ev->id, "device_id", id, "ts", ts,
			 "type", events_type_name(ev->type), "msg", ev->msg);
}

int events_format_text(const tn_event *ev, char *buf, size_t cap)
{
	return logfmt_text(buf, cap, ev->ts_ms, events_type_name(ev->type), ev->msg);
}
