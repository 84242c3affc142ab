/* server/main.c -- tenderd's entry point: settings, signals, start, wait, stop.
 * Signals are blocked before any thread starts and taken here with sigwait,
 * so no handler runs inside library code. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "daemon.h"
#include "log.h"

int main(int argc, char **argv)
{
	tn_config cfg;
	tn_error err = { 0 };
	tenderd *t = NULL;
	sigset_t set;
	int sig = 0;

	config_defaults(&cfg);
	int rc = config_parse_args(&cfg, argc, argv, &err);
	if (rc) {
		if (rc < 0)
			fprintf(stderr, "tenderd: %s\n", err.msg);
		config_free(&cfg);
		return rc < 0 ? 2 : 0;
	}
	log_level = cfg.log_level;
	log_route_libraries();

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	if (daemon_start(&t, &cfg, &err)) {
		log_err("cannot start: %s", err.msg);
		config_free(&cfg);
		return 1;
	}
	log_info("tenderd %s ready", TN_VERSION);
	sigwait(&set, &sig);
	log_info("%s: stopping", strsignal(sig));
	daemon_stop(t);
	log_info("stopped");
	config_free(&cfg);
	return 0;
}
