DROP TABLE jobs;
DROP TABLE ai_turns;
DROP TABLE users;
DROP TABLE inbox;
