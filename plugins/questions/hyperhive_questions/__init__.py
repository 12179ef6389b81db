"""hyperhive-questions: The manager asks the operator a question, with an optional time to live."""
