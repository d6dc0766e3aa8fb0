"""The lab's commands, one module each: the command and the tables and charts it prints.

Each imports its instrument from charlm.lab inside the command, so `charlm --help` never loads
torch; the renderers take the instrument's result duck-typed."""
