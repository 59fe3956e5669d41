/* Logging: levels from MOX_LOG_LEVEL, rank and component on every line,
 * optional host callback (mox_set_log_callback). */
#ifndef MOX_CORE_LOG_H
#define MOX_CORE_LOG_H

#include "mox/mox.h"

/* Current threshold; lines above it are not formatted at all. */
extern mox_log_level_t mox__log_level;
/* Rank printed on log lines; -1 until the bootstrap knows it. */
extern int mox__log_rank;

void mox__log_init(void);
void mox__log(mox_log_level_t level, const char *component, const char *fmt,
              ...) __attribute__((format(printf, 3, 4)));

#define MOX_LOG(level, comp, ...)                                              \
    do {                                                                       \
        if ((level) <= mox__log_level)                                         \
            mox__log((level), (comp), __VA_ARGS__);                            \
    } while (0)
#define MOX_ERROR(comp, ...) MOX_LOG(MOX_LOG_ERROR, comp, __VA_ARGS__)
#define MOX_WARN(comp, ...) MOX_LOG(MOX_LOG_WARN, comp, __VA_ARGS__)
#define MOX_INFO(comp, ...) MOX_LOG(MOX_LOG_INFO, comp, __VA_ARGS__)
#define MOX_DEBUG(comp, ...) MOX_LOG(MOX_LOG_DEBUG, comp, __VA_ARGS__)
#define MOX_TRACE(comp, ...) MOX_LOG(MOX_LOG_TRACE, comp, __VA_ARGS__)

#endif
