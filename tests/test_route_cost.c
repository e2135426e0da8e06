/* Placeholder: being written. */
#include <criterion/criterion.h>

#include "helpers.h"
#include "route_fixture.h"

TestSuite(route_cost);
