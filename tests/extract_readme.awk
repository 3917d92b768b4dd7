# Writes each ```cpp block of a Markdown file to out/readme_block_N.cpp. A block without main()
# is a fragment: its #include and using-namespace lines stay at the top, the rest goes in main().
function flush(   f, i) {
  f = sprintf("%s/readme_block_%d.cpp", out, n++)
  print "// Generated from README.md at configure time." > f
  if (has_main) {
    for (i = 0; i < len; i++) print body[i] > f
  } else {
    for (i = 0; i < len; i++) if (body[i] ~ /^(#include|using namespace)/) print body[i] > f
    print "#include <vector>\nint main() {" > f
    for (i = 0; i < len; i++) if (body[i] !~ /^(#include|using namespace)/) print "  " body[i] > f
    print "  return 0;\n}" > f
  }
  close(f)
}
/^```cpp[ \t]*$/ { inside = 1; len = 0; has_main = 0; next }
inside && /^```/ { inside = 0; flush(); next }
inside { body[len++] = $0; if ($0 ~ /int main\(/) has_main = 1 }
