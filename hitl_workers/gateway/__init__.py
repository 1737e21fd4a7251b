"""The agent gateway: HTTP and Server-Sent Events for agent UIs, and the agent console."""
