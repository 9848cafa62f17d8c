/* Inside the manager module only (manager.c, manager-connections.c): the Manager itself, and what
 * manager.c takes from manager-connections.c. No other file includes this: manager.h is the
 * module's interface. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "echod/accept.h"
#include "echod/children.h"
#include "echod/config.h"
#include "echod/control.h"
#include "echod/manager.h"
#include "echod/sandbox.h"
#include "echod/spawner.h"
#include "echod/udp.h"

struct Manager {
        sd_event *event;
        Config *config;
        Sandbox *sandbox;
        Children *children;
        Accept *accept;
        Spawner *spawner;
        Udp *udp;
        Control *control;
        sd_event_source *post, *status_timer, *watchdog_timer, *shutdown_timer;
        uint64_t watchdog_usec;
        bool stopping;
        unsigned ceiling; /* max_connections, or more while a reload's lower limit drains */
        int stop_signal; /* what live connections were last sent: SIGTERM, then SIGKILL */
        char last_status[1024];
        uint64_t started_realtime, started_monotonic, loaded_realtime;
        unsigned reloads, reload_failures;
};

/* manager-connections.c: accept's callback (a slot, then the hand-off) and the spawner's, which
 * carry each connection to its record; userdata is the Manager. */
extern const AcceptCallbacks manager_accept_callbacks;
extern const SpawnerCallbacks manager_spawner_callbacks;
/* A process that held a connection was reaped (pid unknown to children: ignored); its slot is
 * freed and its record logged. */
void manager_child_exited(Manager *m, pid_t pid, int status);
