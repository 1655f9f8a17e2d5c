// A downstream program: uses an installed (or add_subdirectory'd) additive.
#include <additive/core/params.hpp>

int main() {
  additive::ParamLayout layout;
  layout.add("head.weight", {10, 8}, true);  // (C, d)
  layout.add("head.bias", {10}, false);      // (C)
  return layout.total() == 90 && layout.find("head.bias").offset == 80 ? 0 : 1;
}
