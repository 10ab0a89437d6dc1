/* The push-notification driver's init function.
   NAME: (user, pool, name of the push_notification block, context, error);
   CONFIG: (struct push_notification_driver_config, user, pool, context,
   error).
   xaps-probe: NAME CONFIG */
#include "lib.h"
#include "mail-user.h"
#include "push-notification-drivers.h"

#if defined(NAME)
static int probe_init(struct mail_user *user ATTR_UNUSED,
		      pool_t pool ATTR_UNUSED, const char *name ATTR_UNUSED,
		      void **context ATTR_UNUSED,
		      const char **error_r ATTR_UNUSED)
#elif defined(CONFIG)
static int probe_init(struct push_notification_driver_config *config ATTR_UNUSED,
		      struct mail_user *user ATTR_UNUSED,
		      pool_t pool ATTR_UNUSED, void **context ATTR_UNUSED,
		      const char **error_r ATTR_UNUSED)
#endif
{
	return 0;
}

extern const struct push_notification_driver probe_driver;
const struct push_notification_driver probe_driver = {
	.name = "probe",
	.v = { .init = probe_init },
};
