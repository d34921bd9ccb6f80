# optional_to_oneof.cmake — cmake -P script: copies a proto3 file from IN to
# OUT with each `optional T name = N;` written as `oneof _name { T name = N; }`.
# Why: Debian 12's protoc-c (1.4.1) rejects proto3 `optional`; a one-field
# oneof has the same wire format and gives the same "was it set" case field
# (protoc itself names the synthetic oneof of `optional name` "_name").
file(READ "${IN}" text)
string(REGEX REPLACE
  "\n([ \t]*)optional[ \t]+([A-Za-z0-9_.]+)[ \t]+([A-Za-z0-9_]+)[ \t]*=[ \t]*([0-9]+)[ \t]*;"
  "\n\\1oneof _\\3 { \\2 \\3 = \\4; }" text "${text}")
if(text MATCHES "\n[ \t]*optional[ \t]")
  message(FATAL_ERROR "${IN}: an `optional` field this script does not rewrite is left")
endif()
file(WRITE "${OUT}" "${text}")
