/* Prints mox_version() of the linked libmox.so (for check_version.sh). */
#include "mox/mox.h"

#include <stdio.h>

int main(void)
{
    printf("%s\n", mox_version(NULL, NULL, NULL));
    return 0;
}
